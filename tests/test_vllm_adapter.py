"""vLLM-specific behaviour beyond the shared suite, against real vLLM in separate processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import thaw
from thaw.testing.tiny_model import build_tiny_llama
from thaw.workers import EngineWorker, RemoteError

from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine]
DRIVER = "thaw.adapters.vllm.driver:VLLMDriver"
PROMPT = [4 + (i * 37) % 500 for i in range(200)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny"))


def test_kv_layout_descriptor_matches_reference_model(model, tmp_path):
    """K and V read through thaw's descriptor equal what HF's own Llama computes."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("vllm_layout_probe.py")),
                          model, json.dumps(PROMPT)], capture_output=True, text=True, cwd=tmp_path)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    result = json.loads(line[0][len("RESULT "):])
    assert result["layout"] == "vllm.cpu.vec" and result["tokens"] == 192
    for layer in result["layers"]:
        assert layer["k"] <= 1e-4 * max(1.0, layer["scale"]) and layer["v"] <= 1e-4 * max(1.0, layer["scale"])


def test_blocks_cached_before_attach_are_reported(model, tmp_path):
    with EngineWorker(DRIVER, {"model": model, "thaw_prompt_before_attach": PROMPT}) as w:
        report = w.call("snapshot", path=str(tmp_path / "s.thaw"))
    assert report["cached_blocks"] == 6 and report["captured_blocks"] == 0
    assert len(report["unknown_blocks"]) == 6
    assert thaw.load(tmp_path / "s.thaw").extras["vllm"]["capture"]["unknown_blocks"] == report["unknown_blocks"]


MP_SCRIPT = r"""
import sys
from vllm import LLM
from thaw.adapters.vllm import attach
from thaw.adapters.vllm.driver import ENGINE_DEFAULTS
from thaw.core import EngineUnsupported
llm = LLM(model=sys.argv[1], **ENGINE_DEFAULTS)
try:
    attach(llm)
except EngineUnsupported as exc:
    print("REFUSED", exc)
"""


def test_multiprocess_engine_refused_with_the_setting_to_change(model, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    out = subprocess.run([sys.executable, "-c", MP_SCRIPT, model], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert "REFUSED" in out.stdout, out.stderr[-3000:]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING=0" in out.stdout


def test_fork_cli(model, tmp_path):
    snap = tmp_path / "trunk.thaw"
    with EngineWorker(DRIVER, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        parent.call("snapshot", path=str(snap))
    out = subprocess.run([sys.executable, "-m", "thaw.cli", "fork", str(snap), "-n", "2", "--json",
                          "--engine-config", json.dumps({"model": model, "load_format": "dummy"})],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    children = json.loads(out.stdout)
    # Children continue the 192 cached tokens; the engine computes at least the last page.
    assert [c["cached_tokens"] for c in children] == [160, 160]
    assert children[0]["greedy_tokens"] == children[1]["greedy_tokens"]


def test_dummy_weight_engine_refuses_a_snapshot_without_weights(model, tmp_path):
    """An engine with random weights must not accept KV computed with other weights."""
    snap = tmp_path / "kv-only.thaw"
    with EngineWorker(DRIVER, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        parent.call("snapshot", path=str(snap), weights=False)
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy"}) as child:
        before = child.call("state")
        with pytest.raises(RemoteError) as err:
            child.call("restore", path=str(snap))
        assert err.value.type == "IdentityMismatch" and "weights_digest" in err.value.remote_message
        assert child.call("state") == before


def test_snapshot_of_another_block_size_is_recut_and_hits(model, tmp_path):
    """A 32-token-block snapshot restores into a 64-token-block engine: whole 64-token
    blocks of each path are kept (the report says how many tokens were dropped)."""
    snap = tmp_path / "blocks32.thaw"
    with EngineWorker(DRIVER, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        ref = parent.call("generate", prompt_token_ids=PROMPT, max_tokens=4)
        parent.call("snapshot", path=str(snap))
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy", "block_size": 64}) as child:
        report = child.call("restore", path=str(snap))
        out = child.call("generate", prompt_token_ids=PROMPT, max_tokens=4)
    assert report["recut"]["source_page_size"] == 32 and report["recut"]["target_page_size"] == 64
    assert report["identity_differences"]["page_size"] == [32, 64]
    assert out["cached_tokens"] == (len(PROMPT) - 1) // 64 * 64 and out["tokens"] == ref["tokens"]


def test_parameters_weight_format_is_refused_on_the_cpu_backend(model, tmp_path):
    """vLLM's CPU backend repacks its linear weights, so it neither captures nor loads weights
    as parameters: both are refused by name, and a refused restore changes nothing."""
    snap, as_params = tmp_path / "s.thaw", tmp_path / "params.thaw"
    with EngineWorker(DRIVER, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        with pytest.raises(RemoteError) as err:
            parent.call("snapshot", path=str(snap), weights_format="vllm.parameters")
        assert err.value.type == "EngineUnsupported" and "repacks" in err.value.remote_message
        parent.call("snapshot", path=str(snap))
    loaded = thaw.load(snap)
    assert loaded.weights_format == "checkpoint"
    loaded.weights_format = "vllm.parameters"
    thaw.save(loaded, as_params)
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy"}) as child:
        before = child.call("state")
        for weights in (True, False):
            with pytest.raises(RemoteError) as err:
                child.call("restore", path=str(as_params), weights=weights)
            assert err.value.type == "EngineUnsupported" and "CUDA engine" in err.value.remote_message
        with pytest.raises(RemoteError) as err:
            child.call("prepare", path=str(snap), kv_on_device=True)
        assert err.value.type == "EngineUnsupported" and "CUDA engine" in err.value.remote_message
        assert child.call("state") == before
