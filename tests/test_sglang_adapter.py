"""SGLang adapter specifics, on real SGLang engines in separate processes (the shared
checks are in test_sglang_conformance.py)."""

import pytest

import thaw
from thaw.testing.tiny_model import build_tiny_llama
from thaw.workers import EngineWorker, RemoteError

from .engines import needs_sglang

pytestmark = [needs_sglang, pytest.mark.engine]

DRIVER = "thaw.adapters.sglang.driver:SGLangDriver"
PROMPT = [4 + (i * 13) % 500 for i in range(160)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny"))


def test_python_tree_core_snapshot_restores_into_the_default_rust_core(model, tmp_path):
    """Both ways of reading the tree produce the same neutral snapshot contract; a dummy-
    weight engine has nothing to snapshot until it is restored; slots stay accounted for."""
    from thaw.adapters.sglang.engine_access import internals

    if not internals().tree_core:
        pytest.skip("this SGLang release's dense models use the legacy radix cache, with no tree cores")
    snap = tmp_path / "python-core.thaw"
    python_core = {"SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python"}
    with EngineWorker(DRIVER, {"model": model, "env": python_core}) as parent:
        assert parent.call("info")["identity"]["extra"]["tree_cache"] == "UnifiedRadixCache"
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=4)
        parent.call("generate", prompt_token_ids=PROMPT[:100] + [7] * 20, max_tokens=4)  # a branch
        ref = parent.call("generate", prompt_token_ids=PROMPT, max_tokens=8)
        report = parent.call("snapshot", path=str(snap))
        assert report["tree_nodes"] >= 3 and report["tokens_skipped"] == 0
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy"}) as child:
        with pytest.raises(RemoteError) as err:
            child.call("snapshot", path=str(tmp_path / "dummy.thaw"))
        assert err.value.type == "ThawError" and "load_format='dummy'" in err.value.remote_message
        before = child.call("state")
        foreign = thaw.load(snap)  # weights in a vLLM-only format: refused by name, nothing changes
        foreign.weights_format = "vllm.parameters"
        thaw.save(foreign, tmp_path / "foreign.thaw")
        with pytest.raises(RemoteError) as err:
            child.call("restore", path=str(tmp_path / "foreign.thaw"))
        assert err.value.type == "IdentityMismatch" and "weights_format" in err.value.remote_message
        assert child.call("state") == before
        restored = child.call("restore", path=str(snap))
        after = child.call("state")
        assert restored["new_tokens"] == report["tree_tokens"] == after["tree_tokens"]
        assert restored["weights_route"] == "checkpoint/host (the engine runs on the CPU)"
        assert after["free_slots"] + after["evictable_slots"] == before["free_slots"] + before["evictable_slots"]
        out = child.call("generate", prompt_token_ids=PROMPT, max_tokens=8)
        assert out["cached_tokens"] == len(PROMPT) - 1 and out["tokens"] == ref["tokens"]
        branch = child.call("generate", prompt_token_ids=PROMPT[:100] + [7] * 20, max_tokens=1)
        assert branch["cached_tokens"] == 119
        child.call("snapshot", path=str(tmp_path / "again.thaw"))  # restored weights are real


def test_engine_without_the_plugin_is_refused_with_the_setting_to_change(model):
    with pytest.raises(RemoteError) as err:
        EngineWorker(DRIVER, {"model": model, "env": {"SGLANG_PLUGINS": "some-other-plugin"}})
    assert err.value.type == "EngineUnsupported"
    assert "sglang.srt.plugins" in err.value.remote_message and "SGLANG_PLUGINS" in err.value.remote_message


@pytest.fixture(scope="module")
def engine(model):
    with EngineWorker(DRIVER, {"model": model}) as w:
        yield w


def test_inflight_request_settings_not_carried_are_refused_by_name(engine, tmp_path):
    """Penalties and the seed travel with an in-flight request; a logit bias does not, so
    the snapshot refuses naming the request and the setting, and writes nothing."""
    w = engine
    # long enough to be still running when `step` pauses the engine (it may overshoot)
    w.call("add_request", request_id="penalised", prompt_token_ids=PROMPT[:40], max_tokens=200,
           temperature=0.7, seed=3, sampling={"frequency_penalty": 0.5, "repetition_penalty": 1.2})
    w.call("step")
    w.call("snapshot", path=str(tmp_path / "carried.thaw"), weights=False)
    (req,) = thaw.load(tmp_path / "carried.thaw").requests
    assert req.sampling["frequency_penalty"] == 0.5 and req.sampling["repetition_penalty"] == 1.2
    assert req.sampling["sampling_seed"] == 3
    w.call("finish")
    w.call("add_request", request_id="biased", prompt_token_ids=PROMPT[:40], max_tokens=200,
           sampling={"logit_bias": {"7": 2.0}})
    w.call("step")
    with pytest.raises(RemoteError) as err:
        w.call("snapshot", path=str(tmp_path / "biased.thaw"), weights=False)
    assert err.value.type == "EngineUnsupported"
    assert "'biased'" in err.value.remote_message and "logit_bias" in err.value.remote_message
    assert not (tmp_path / "biased.thaw").exists()
    w.call("finish")


def test_handle_is_an_engine_adapter_capturing_and_restoring_in_memory(engine):
    w = engine
    ref = w.call("generate", prompt_token_ids=PROMPT, max_tokens=8)
    captured = w.call("capture")
    assert captured["adapter"] and captured["requests"] == 0 and captured["tree_tokens"] >= len(PROMPT)
    w.call("reset_prefix_cache")
    assert w.call("state")["tree_tokens"] == 0
    assert w.call("restore_captured", weights=False)["new_tokens"] == captured["tree_tokens"]
    out = w.call("generate", prompt_token_ids=PROMPT, max_tokens=8)
    assert out["cached_tokens"] == len(PROMPT) - 1 and out["tokens"] == ref["tokens"]


def test_prepare_opens_once_reopens_a_rewritten_file_and_refuses_device_pages_on_the_cpu(engine, tmp_path):
    w = engine
    path = tmp_path / "prepared.thaw"
    w.call("reset_prefix_cache")
    w.call("generate", prompt_token_ids=PROMPT[:64], max_tokens=2)
    w.call("snapshot", path=str(path), weights=False)
    assert w.call("prepare", path=str(path)) >= 0
    with pytest.raises(RemoteError) as err:
        w.call("prepare", path=str(path), kv_on_device=True)
    assert err.value.type == "EngineUnsupported" and "CUDA" in err.value.remote_message
    w.call("reset_prefix_cache")
    short = w.call("restore", path=str(path), weights=False)["new_tokens"]
    # the same path rewritten with a longer prefix: the prepared snapshot is not reused
    w.call("generate", prompt_token_ids=PROMPT, max_tokens=2)
    w.call("snapshot", path=str(path), weights=False)
    w.call("reset_prefix_cache")
    longer = w.call("restore", path=str(path), weights=False)["new_tokens"]
    assert 64 <= short < len(PROMPT) <= longer
