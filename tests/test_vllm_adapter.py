"""vLLM-specific behaviour beyond the shared suite, against real vLLM in separate processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


# Relative tolerance per engine dtype: float32 K/V agree to rounding; bfloat16 engines
# compute K/V from bfloat16 activations, a layout error differs by the values' own scale.
REFERENCE_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


@pytest.mark.parametrize("dtype", sorted(REFERENCE_TOLERANCE))
def test_kv_layout_descriptor_matches_reference_model(model, tmp_path, dtype):
    """K and V read through thaw's descriptor equal what HF's own Llama computes, for the
    kernel ISA vLLM picks on this CPU and dtype ('amx' for bfloat16 on AMX machines)."""
    from thaw.adapters.vllm.engine_access import CPU_ISA_LAYOUTS

    out = subprocess.run([sys.executable, str(Path(__file__).with_name("vllm_layout_probe.py")),
                          model, json.dumps(PROMPT), dtype], capture_output=True, text=True, cwd=tmp_path)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    result = json.loads(line[0][len("RESULT "):])
    print(f"vLLM CPU attention ISA for {dtype}: {result['isa']}, thaw layout {result['layout']}")
    (isa,) = result["isa"]
    assert result["layout"] == CPU_ISA_LAYOUTS[isa](32, 2, 32, dtype).name and result["tokens"] == 192
    tol = REFERENCE_TOLERANCE[dtype]
    for layer in result["layers"]:
        assert layer["k"] <= tol * max(1.0, layer["scale"]) and layer["v"] <= tol * max(1.0, layer["scale"]), layer


def test_attach_after_traffic_captures_every_cached_block(model, tmp_path):
    """thaw's vllm.general_plugins entry point records from the engine's start, so a late
    attach still snapshots every block, and a child restored from it hits them."""
    snap = tmp_path / "late.thaw"
    with EngineWorker(DRIVER, {"model": model, "thaw_prompt_before_attach": PROMPT}) as w:
        assert w.call("recorder_stats")["since_pool_start"]
        report = w.call("snapshot", path=str(snap), strict=True)
    assert report["cached_blocks"] == 6 and report["captured_blocks"] == 6 and report["unknown_blocks"] == []
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy"}) as child:
        child.call("restore", path=str(snap))
        assert child.call("generate", prompt_token_ids=PROMPT, max_tokens=1)["cached_tokens"] == 192


def test_blocks_left_out_warn_and_strict_refuses(model, tmp_path):
    """Without the plugin (VLLM_PLUGINS excludes it), blocks cached before attach cannot be
    captured: the snapshot says so in a warning and its report; strict=True refuses."""
    with EngineWorker(DRIVER, {"model": model, "thaw_prompt_before_attach": PROMPT},
                      env={"VLLM_PLUGINS": "none"}) as w:
        assert not w.call("recorder_stats")["since_pool_start"]
        with pytest.raises(RemoteError) as err:
            w.call("snapshot", path=str(tmp_path / "strict.thaw"), strict=True)
        assert err.value.type == "SnapshotIncomplete" and "0 of the 6 blocks" in err.value.remote_message
        assert not (tmp_path / "strict.thaw").exists()
        report = w.call("snapshot", path=str(tmp_path / "s.thaw"))
        log = w._log_tail()
    assert report["cached_blocks"] == 6 and report["captured_blocks"] == 0
    assert len(report["unknown_blocks"]) == 6
    assert "captures 0 of the 6 blocks" in log and "6 tokens unknown" in log
    assert thaw.load(tmp_path / "s.thaw").extras["vllm"]["capture"]["unknown_blocks"] == report["unknown_blocks"]


def test_recorder_stays_bounded_by_the_block_pool(model, tmp_path):
    """A server that never snapshots serves thousands of distinct prompts: the recorder
    keeps at most about twice the pool's blocks, and still knows every cached block."""
    prompts = [[4 + (i * 7 + j) % 500 for j in range(64)] for i in range(2500)]
    with EngineWorker(DRIVER, {"model": model, "kv_cache_memory_bytes": 4 * 2**20}) as w:
        for start in range(0, len(prompts), 500):
            w.call("generate_distinct", prompts=prompts[start:start + 500], max_tokens=1)
        stats = w.call("recorder_stats")
        report = w.call("snapshot", path=str(tmp_path / "s.thaw"), weights=False, strict=True)
    assert stats["pool_blocks"] < 1000 < 2 * len(prompts)
    assert stats["records"] <= stats["bound"] <= 2 * stats["pool_blocks"] + 64
    assert report["captured_blocks"] == report["cached_blocks"] > 0


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
    """An engine with random weights must not accept KV computed with other weights; nor
    reference weights it cannot show to be a file's (other weights, or its own unknown)."""
    snap, other, session = tmp_path / "kv-only.thaw", tmp_path / "other.thaw", tmp_path / "session.thaw"
    thaw.save(thaw.StateSnapshot.from_tensors({"w": torch.ones(4)}), other)
    with EngineWorker(DRIVER, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        parent.call("snapshot", path=str(snap), weights=False)
        with pytest.raises(RemoteError) as err:
            parent.call("snapshot", path=str(session), weights_from=str(other))
        assert err.value.type == "IdentityMismatch" and "weights_digest of" in err.value.remote_message
        assert not session.exists()
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy"}) as child:
        before = child.call("state")
        with pytest.raises(RemoteError) as err:
            child.call("restore", path=str(snap))
        assert err.value.type == "IdentityMismatch" and "weights_digest" in err.value.remote_message
        assert child.call("state") == before
        with pytest.raises(RemoteError) as err:
            child.call("snapshot", path=str(session), weights_from=str(other))
        assert err.value.type == "ThawError" and "weights are unknown" in err.value.remote_message
        assert not session.exists()


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


def test_unknown_weights_on_both_sides_are_not_a_match(model, tmp_path):
    """Two engines with dummy weights both have an unknown ("") digest: KV from one must
    not enter the other unless the caller vouches for the weights."""
    snap = tmp_path / "dummy-kv.thaw"
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy"}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        parent.call("snapshot", path=str(snap), weights=False)
    assert thaw.load(snap).identity.weights_digest == ""
    with EngineWorker(DRIVER, {"model": model, "load_format": "dummy"}) as child:
        before = child.call("state")
        with pytest.raises(RemoteError) as err:
            child.call("restore", path=str(snap), weights=False)
        assert err.value.type == "IdentityMismatch" and "weights_digest" in err.value.remote_message
        assert "trust_unknown_weights" in err.value.remote_message
        assert child.call("state") == before
        report = child.call("restore", path=str(snap), weights=False, trust_unknown_weights=True)
        assert report["pages_written"] == 6


# Settings of an in-flight request that a snapshot cannot carry, with the word the refusal names.
UNCARRIED = {"stop strings": ({"stop": ["w5"]}, "stop"), "logprobs": ({"logprobs": 2}, "logprobs"),
             "logit bias": ({"logit_bias": {7: 1.5}}, "logit_bias"), "n": ({"n": 2, "temperature": 0.8, "seed": 1}, "n=2"),
             "allowed tokens": ({"allowed_token_ids": [5, 6, 7]}, "allowed_token_ids")}


def test_inflight_request_settings_not_carried_are_refused_by_name(model, tmp_path):
    """A snapshot never resumes a different request: settings it does not carry make it
    refuse, naming the request and the setting; requests=False snapshots without them."""
    with EngineWorker(DRIVER, {"model": model}) as w:
        for name, (sampling, word) in UNCARRIED.items():
            rid = "r-" + name.replace(" ", "-")
            w.call("add_request", request_id=rid, prompt_token_ids=PROMPT[:40], max_tokens=8,
                   sampling=sampling)
            w.call("step")
            with pytest.raises(RemoteError) as err:
                w.call("snapshot", path=str(tmp_path / "s.thaw"), weights=False)
            assert err.value.type == "EngineUnsupported", name
            assert rid in err.value.remote_message and word in err.value.remote_message, err.value.remote_message
            assert not (tmp_path / "s.thaw").exists()
            report = w.call("snapshot", path=str(tmp_path / "no-requests.thaw"), weights=False, requests=False)
            assert report["requests"] == 0
            w.call("finish")


def test_request_vllm_would_refuse_is_refused_before_the_cache_changes(model, tmp_path):
    """An in-flight request whose settings vLLM rejects is found before any block is
    written: the restore raises naming it, and the engine's cache is as it was."""
    snap = tmp_path / "inflight.thaw"
    with EngineWorker(DRIVER, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        parent.call("add_request", request_id="bad-later", prompt_token_ids=PROMPT, max_tokens=8)
        parent.call("step")
        parent.call("snapshot", path=str(snap), weights=False)
    loaded = thaw.load(snap)
    loaded.requests[0].sampling["temperature"] = -1.0
    thaw.save(loaded, tmp_path / "bad.thaw")
    with EngineWorker(DRIVER, {"model": model}) as child:
        before = child.call("state")
        with pytest.raises(RemoteError) as err:
            child.call("restore", path=str(tmp_path / "bad.thaw"), weights=False)
        assert err.value.type == "SchemaError" and "'bad-later'" in err.value.remote_message
        assert child.call("state") == before
        assert child.call("generate", prompt_token_ids=PROMPT, max_tokens=1)["cached_tokens"] == 0
