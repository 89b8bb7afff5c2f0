"""The shared conformance suite against real SGLang on a CUDA device: SGLang's own Llama,
Triton attention, page sizes 16 and 64 (which CPU SGLang cannot allocate), KV pages moved
and checked by the CUDA movers. Skipped, with the reason, on machines without CUDA or
SGLang; it runs on the GPU box with SGLang 0.5.14 (scripts/gpu/)."""

from dataclasses import replace

import pytest
import torch

from thaw.conformance import EngineUnderTest, SnapshotRestoreConformance
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama

from .engines import needs_sglang

pytestmark = [needs_sglang, pytest.mark.engine, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device: CPU-only machine; runs on the GPU box")]

GPU_MODEL = TinyLlama(hidden_size=256, num_attention_heads=2, num_key_value_heads=2, head_dim=128)
# SGLang on one GPU as people run it, small enough that the suite's engines share the card
# (also the GPU server and cross-engine tests' settings).
GPU_SETTINGS = {"device": "cuda", "attention_backend": "triton", "model_impl": "auto", "dtype": "bfloat16",
                "mem_fraction_static": 0.05, "max_total_tokens": 16384, "disable_cuda_graph": True}
# Deterministic inference: batch-invariant kernels (radix cache kept with Triton attention),
# so the parent's resubmitted request and the restored child's resumed one (the in-flight
# check's reference, resume_oracle below) run the same computation.
GPU_ENGINE = {**GPU_SETTINGS, "enable_deterministic_inference": True}


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    model = build_tiny_llama(models / "tiny", GPU_MODEL, dtype="bfloat16")
    other = build_tiny_llama(models / "other", replace(GPU_MODEL, num_hidden_layers=3), dtype="bfloat16")
    retrained = build_tiny_llama(models / "retrained", replace(GPU_MODEL, seed=1), dtype="bfloat16")
    spec = "thaw.adapters.sglang.driver:SGLangDriver"
    return EngineUnderTest(
        driver=spec, config={"model": str(model), **GPU_ENGINE, "page_size": 16},
        fresh_config={"load_format": "dummy"},
        mismatches={"dtype": ({"dtype": "float16"}, "dtype"),
                    "model": ({"model": str(other)}, "model_config_digest")},
        prompt=[4 + (i * 37) % 500 for i in range(300)], page_size=16, fork_engine="sglang",
        inflight_max_tokens=200, other_weights={"model": str(retrained)},
        # A resumed request's last partial page is recomputed by Triton's extend kernel, the
        # uninterrupted run computed it by decode: in bf16 the two part at a low-margin token
        # (seen at 1e0edfe and 9ae26b8), so the reference is SGLang's own resubmission.
        resume_oracle="resubmitted")


class TestSGLangOnGPUPage16(SnapshotRestoreConformance):
    @pytest.fixture(scope="class")
    def engine_under_test(self, gpu_engine):
        return gpu_engine


class TestSGLangOnGPUPage64(SnapshotRestoreConformance):
    @pytest.fixture(scope="class")
    def engine_under_test(self, gpu_engine):
        return replace(gpu_engine, config={**gpu_engine.config, "page_size": 64}, page_size=64)


def test_weights_are_staged_on_the_gpu_and_streamed_when_cold(gpu_engine, tmp_path):
    """A fresh engine's weights come up from the registered file and are checked on the
    GPU; from a file evicted from the page cache, they are read with O_DIRECT; both give
    the parent's output."""
    from thaw.core import residency

    snap = tmp_path / "trunk.thaw"
    with gpu_engine.engine() as parent:
        parent.call("generate", prompt_token_ids=gpu_engine.prompt, max_tokens=8)
        ref = parent.call("generate", prompt_token_ids=gpu_engine.prompt, max_tokens=8)  # from its cache
        parent.call("snapshot", path=str(snap))
    for route in ("checkpoint/gpu-staged", "checkpoint/gpu-streamed"):
        if route.endswith("streamed"):
            residency.evict(snap)
        with gpu_engine.fresh_engine() as child:
            restored = child.call("restore", path=str(snap))
            assert restored["weights_route"] == route
            out = child.call("generate", prompt_token_ids=gpu_engine.prompt, max_tokens=8)
            assert out["tokens"] == ref["tokens"]


def test_prepared_pages_on_the_device_restore_without_the_link(gpu_engine, tmp_path):
    """prepare(kv_on_device=True) keeps the snapshot's KV, checked, on the GPU; each later
    restore of that file writes the pool from there and serves the parent's output."""
    snap = tmp_path / "trunk.thaw"
    with gpu_engine.engine() as parent:
        parent.call("generate", prompt_token_ids=gpu_engine.prompt, max_tokens=8)
        ref = parent.call("generate", prompt_token_ids=gpu_engine.prompt, max_tokens=8)
        parent.call("snapshot", path=str(snap))
    with gpu_engine.fresh_engine() as child:
        child.call("restore", path=str(snap))  # the weights, once
        child.call("prepare", path=str(snap), kv_on_device=True)
        for _ in range(2):
            child.call("reset_prefix_cache")
            restored = child.call("restore", path=str(snap), weights=False)
            assert restored["kv_from"] == "device, checked when prepared"
            out = child.call("generate", prompt_token_ids=gpu_engine.prompt, max_tokens=8)
            assert out["tokens"] == ref["tokens"] and out["cached_tokens"] == ref["cached_tokens"]

