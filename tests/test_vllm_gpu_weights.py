"""Restores into vLLM on a CUDA device beyond the shared suite: weights as vLLM parameters,
straight into another engine's parameters and checked before anything changes; KV pages
kept on the device for repeated restores. Skipped, with the reason, without CUDA or vLLM;
runs on the GPU box with vLLM 0.26 (scripts/gpu/)."""

import pytest
import torch

import thaw
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama
from thaw.workers import EngineWorker, RemoteError

from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device: CPU-only machine; runs on the GPU box")]
DRIVER = "thaw.adapters.vllm.driver:VLLMDriver"
PROMPT = [4 + (i * 37) % 500 for i in range(300)]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    model = build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny",
                             TinyLlama(hidden_size=256, num_attention_heads=2, num_key_value_heads=2,
                                       head_dim=128), dtype="bfloat16")
    return {"model": str(model), "dtype": "bfloat16", "block_size": 16, "kv_cache_memory_bytes": 256 * 2**20}


@pytest.fixture(scope="module")
def parent_run(config, tmp_path_factory):
    """A parent with real weights: its cached-prefix output, digest, and snapshots in both formats."""
    d = tmp_path_factory.mktemp("snaps")
    with EngineWorker(DRIVER, config) as parent:
        parent.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        cached = parent.call("generate", prompt_token_ids=PROMPT, max_tokens=16)
        parent.call("snapshot", path=str(d / "params.thaw"))
        parent.call("snapshot", path=str(d / "ckpt.thaw"), weights_format="checkpoint")
        digest = parent.call("info")["identity"]["weights_digest"]
    return {"tokens": cached["tokens"], "digest": digest, "dir": d}


@pytest.mark.parametrize("name,fmt,route", [("params.thaw", "vllm.parameters", "parameters/gpu-staged"),
                                            ("ckpt.thaw", "checkpoint", "checkpoint/gpu-staged")])
def test_weights_restore_into_a_dummy_engine(config, parent_run, name, fmt, route):
    path = parent_run["dir"] / name
    assert thaw.load(path).weights_format == fmt
    with EngineWorker(DRIVER, {**config, "load_format": "dummy"}) as child:
        assert child.call("prepare", path=str(path)) >= 0
        report = child.call("restore", path=str(path))
        assert (report["weights_format"], report["weights_route"]) == (fmt, route)
        out = child.call("generate", prompt_token_ids=PROMPT, max_tokens=16)
        assert out["cached_tokens"] > 0 and out["tokens"] == parent_run["tokens"]
        if fmt == "vllm.parameters":
            # The digest the engine computes of its own parameters on the GPU is the snapshot's.
            assert child.call("info")["identity"]["weights_digest"] == parent_run["digest"]


def test_corrupt_parameter_bytes_are_refused_before_the_engine_changes(config, parent_run, tmp_path):
    path = tmp_path / "bad.thaw"
    path.write_bytes((parent_run["dir"] / "params.thaw").read_bytes())
    snap = thaw.load(path, verify=False)
    name = next(iter(snap.weights))
    sec = snap.source.section(f"weights/{name}")
    with open(path, "r+b") as f:
        f.seek(sec.offset + sec.length // 2)
        b = f.read(1)
        f.seek(sec.offset + sec.length // 2)
        f.write(bytes([b[0] ^ 0x40]))
    with EngineWorker(DRIVER, {**config, "load_format": "dummy"}) as child:
        before = child.call("generate", prompt_token_ids=PROMPT[:40], max_tokens=8)["tokens"]
        state = child.call("state")
        with pytest.raises(RemoteError) as err:
            child.call("restore", path=str(path))
        assert err.value.type == "ChecksumError" and name in err.value.remote_message
        assert child.call("state") == state
        assert child.call("generate", prompt_token_ids=PROMPT[:40], max_tokens=8)["tokens"] == before


def test_parameters_of_another_model_are_refused(config, parent_run, tmp_path_factory):
    other = build_tiny_llama(tmp_path_factory.mktemp("other") / "tiny",
                             TinyLlama(hidden_size=256, num_attention_heads=2, num_key_value_heads=2,
                                       head_dim=128, num_hidden_layers=3), dtype="bfloat16")
    with EngineWorker(DRIVER, {**config, "model": str(other), "load_format": "dummy"}) as child:
        with pytest.raises(RemoteError) as err:
            child.call("restore", path=str(parent_run["dir"] / "params.thaw"))
        assert err.value.type == "IdentityMismatch"


def test_kv_pages_kept_on_the_device_restore_again_and_again(config, parent_run):
    path = str(parent_run["dir"] / "params.thaw")
    with EngineWorker(DRIVER, {**config, "load_format": "dummy"}) as child:
        child.call("prepare", path=path, kv_on_device=True)
        for weights in (True, False, False):
            child.call("reset_prefix_cache")
            report = child.call("restore", path=path, weights=weights, requests=False)
            assert report["kv_from"] == "device" and report["pages_written"] == report["pages_in_snapshot"]
            out = child.call("generate", prompt_token_ids=PROMPT, max_tokens=16)
            assert out["cached_tokens"] > 0 and out["tokens"] == parent_run["tokens"]
