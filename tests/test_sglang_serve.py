"""A real SGLang HTTP server (`python -m sglang.launch_server` on CPU, a subprocess) with
thaw installed, driven over HTTP (`/generate`) and by `thaw snapshot/restore/status --url`.
The checks are a mixin (`ServerChecks`) that tests/test_sglang_serve_gpu.py runs against
servers on a CUDA device."""

import json

import pytest

from thaw.testing.sglang_server import SGLangServer

from .engine_configs import tiny_models
from .engines import needs_sglang
from .serve_cases import (check_keyless_server_refuses_writes, check_request_rules, check_urls_outside_refused,
                          refusal_cases, serving, snapshot_bucket, thaw_cli)

pytestmark = [needs_sglang, pytest.mark.engine]
KEY = "test-key"
PROMPT = [4 + (i * 37) % 500 for i in range(300)]


@pytest.fixture(scope="module")
def cpu_servers(tmp_path_factory):
    model = tiny_models(tmp_path_factory.mktemp("models"))[0]
    snaps = tmp_path_factory.mktemp("snapshots")
    logs = tmp_path_factory.mktemp("logs")
    with snapshot_bucket() as (allowed, env):
        parent = SGLangServer(model, snaps, logs / "parent.log", api_key=KEY, env=env)
        child = SGLangServer(model, snaps, logs / "child.log", api_key=KEY, env=env, load_format="dummy")
        keyless = SGLangServer(model, snaps, logs / "keyless.log", api_key=None, load_format="dummy")
        with serving(parent, child, keyless):
            yield parent, child, snaps, allowed, keyless


class ServerChecks:
    """Checks of a parent and a fresh (dummy-weight) child server. Provide the fixture
    `servers`: (parent, child, snapshot dir, the URL prefix snapshots may use or None
    where no S3-compatible server runs); PAGE_SIZE is the servers' page size."""

    PAGE_SIZE = 1

    def cached(self, prompt: list[int]) -> int:
        """The prompt's tokens a cache hit covers: whole pages, one token left to compute."""
        return (len(prompt) - 1) // self.PAGE_SIZE * self.PAGE_SIZE

    def test_snapshot_of_one_server_restores_into_a_fresh_one(self, servers):
        parent, child, snaps, *_ = servers
        tokens, cached = parent.generate(PROMPT)
        assert cached == 0
        assert parent.generate(PROMPT) == (tokens, self.cached(PROMPT))  # its own cache
        out = thaw_cli("snapshot", "--url", parent.url, "trunk.thaw", key=KEY)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["tree_tokens"] >= len(PROMPT) and report["requests"] == 0 and (snaps / "trunk.thaw").is_file()

        status = json.loads(thaw_cli("status", "--url", child.url, key=KEY).stdout)
        assert status["engine"] == "sglang" and status["snapshot_dir"] == str(snaps)
        assert status["identity"]["extra"]["load_format"] == "dummy"
        control_tokens, control_cached = child.generate(PROMPT)  # dummy weights: now cached with them
        assert control_cached == 0 and control_tokens != tokens

        out = thaw_cli("restore", "--url", child.url, "trunk.thaw", key=KEY)
        assert out.returncode == 0, out.stderr
        restored = json.loads(out.stdout)
        assert restored["weights_restored"] > 0 and restored["new_tokens"] >= self.cached(PROMPT)
        assert child.generate(PROMPT) == (tokens, self.cached(PROMPT)), "served from the control's stale KV"

    def test_state_changing_requests_are_refused_unless_keyed_json_and_well_formed(self, servers):
        _, child, _, _, *keyless = servers
        check_request_rules(child.url, KEY)
        if keyless:
            check_keyless_server_refuses_writes(keyless[0].url)
            assert len(keyless[0].generate([5, 6, 7, 8], max_new_tokens=2)[0]) == 2  # serving all along

    def test_refusals_come_back_as_http_errors_and_the_server_keeps_serving(self, servers):
        parent, child, snaps, *_ = servers
        if not (snaps / "trunk.thaw").exists():
            assert thaw_cli("snapshot", "--url", parent.url, "trunk.thaw", key=KEY).returncode == 0
        child.flush_cache()  # so that a restore needs every page of the file
        probe = [5, 6, 7, 8]
        child.generate(probe, max_new_tokens=2)  # the cache the refusals must leave as it is
        before = json.loads(thaw_cli("status", "--url", child.url, key=KEY).stdout)
        for args, expected, key in refusal_cases(child.url, KEY, snaps, "trunk.thaw"):
            out = thaw_cli(*args, key=key)
            assert out.returncode in (2, 3) and expected in out.stderr, (args, out.stderr)
            assert "Traceback" not in out.stderr
            assert len(child.generate(probe, max_new_tokens=2)[0]) == 2  # still serving
        after = json.loads(thaw_cli("status", "--url", child.url, key=KEY).stdout)
        assert (after["tree_tokens"], after["free_slots"]) == (before["tree_tokens"], before["free_slots"])

    def test_snapshots_at_urls_only_under_the_allowed_prefix(self, servers):
        parent, child, _, allowed, *_ = servers
        if allowed is None:
            pytest.skip("no S3-compatible server runs beside these servers")
        tokens, _ = parent.generate(PROMPT)
        url = f"{allowed}/trunk.thaw"
        out = thaw_cli("snapshot", "--url", parent.url, url, key=KEY)
        assert out.returncode == 0, out.stderr
        child.flush_cache()
        out = thaw_cli("restore", "--url", child.url, url, key=KEY)
        assert out.returncode == 0, out.stderr
        assert child.generate(PROMPT) == (tokens, self.cached(PROMPT))
        check_urls_outside_refused(allowed, parent, child, KEY)


class TestSGLangServerOnCPU(ServerChecks):
    @pytest.fixture(scope="class")
    def servers(self, cpu_servers):
        return cpu_servers
