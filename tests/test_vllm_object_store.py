"""vLLM snapshots to and restores from s3:// URLs on a real S3-compatible server process:
the in-process engine reads the object in the caller's process, the multiprocess engine's
worker reads it itself; both hit the full prefix with the parent's output."""

import pytest

from thaw.adapters.vllm.driver import VLLMDriver

from .engine_configs import tiny_models
from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine]
pytest.importorskip("s3fs", reason="needs s3fs (pip install thaw[s3]); .ci/run installs it")
pytest.importorskip("moto", reason="needs moto's server (pip install 'moto[server]'); .ci/run installs it")
PROMPT = [4 + (i * 37) % 500 for i in range(300)]
FULL_BLOCKS = 300 // 32 * 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from thaw.testing.s3_server import bucket_in_env

    with bucket_in_env("engines") as bucket:  # engine processes started from here inherit its env
        yield bucket, tiny_models(tmp_path_factory.mktemp("models"))[0]


@pytest.fixture(scope="module")
def trunk(store):
    bucket, model = store
    parent = VLLMDriver({"model": model, "thaw_engine": "multiprocess"})
    expected = parent.generate(PROMPT, 8)["tokens"]
    url = f"{bucket}/trunk.thaw"
    parent.snapshot(url)  # written by the worker process, uploaded from there
    return url, expected


@pytest.mark.parametrize("mode", ["inprocess", "multiprocess"])
def test_restore_from_a_url(store, trunk, mode):
    _, model = store
    url, expected = trunk
    child = VLLMDriver({"model": model, "load_format": "dummy", "thaw_engine": mode})
    report = child.restore(url)
    assert report["pages_written"] == FULL_BLOCKS // 32 and report["weights_restored"] > 0
    out = child.generate(PROMPT, 8)
    assert out["cached_tokens"] == FULL_BLOCKS and out["tokens"] == expected


def test_the_command_line_forks_from_a_url(store, trunk, tmp_path):
    """`thaw fork s3://...`: the child engine's worker reads the object itself (the
    environment naming the store is inherited)."""
    import json
    import subprocess
    import sys

    _, model = store
    url, _ = trunk
    out = subprocess.run([sys.executable, "-m", "thaw.cli", "fork", url, "-n", "1", "--max-tokens", "4", "--json",
                          "--engine-config", json.dumps({"model": model, "load_format": "dummy"})],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (child,) = json.loads(out.stdout)
    # the default prompt is the trunk's cached path itself, whose last block vLLM recomputes
    assert child["cached_tokens"] == FULL_BLOCKS - 32 and len(child["tokens"]) == 4
