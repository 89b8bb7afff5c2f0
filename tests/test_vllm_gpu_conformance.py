"""The shared conformance suite against real vLLM on a CUDA device (FlashAttention layout,
KV moved by the CUDA movers). Skipped, with the reason, on machines without CUDA or vLLM;
it runs on the GPU box with vLLM 0.26 (scripts/gpu/)."""

import pytest
import torch

from thaw.conformance import EngineUnderTest, SnapshotRestoreConformance
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama

from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device: CPU-only machine; runs on the GPU box")]

GPU_MODEL = TinyLlama(hidden_size=256, num_attention_heads=2, num_key_value_heads=2, head_dim=128)
# The KV's size is fixed; vLLM's start-up check then asks only a tenth of the card to be free,
# so the suite's classes can run side by side on one card (each in its own pytest process).
GPU_SETTINGS = {"dtype": "bfloat16", "block_size": 16, "kv_cache_memory_bytes": 256 * 2**20,
                "gpu_memory_utilization": 0.1}


@pytest.fixture(scope="module")
def engine_under_test(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    model = build_tiny_llama(models / "tiny", GPU_MODEL, dtype="bfloat16")
    other = build_tiny_llama(models / "other", TinyLlama(hidden_size=256, num_attention_heads=2,
                                                         num_key_value_heads=2, head_dim=128,
                                                         num_hidden_layers=3), dtype="bfloat16")
    retrained = build_tiny_llama(models / "retrained", TinyLlama(hidden_size=256, num_attention_heads=2,
                                                                 num_key_value_heads=2, head_dim=128, seed=1),
                                 dtype="bfloat16")
    return EngineUnderTest(
        driver="thaw.adapters.vllm.driver:VLLMDriver",
        config={"model": str(model), **GPU_SETTINGS},
        fresh_config={"load_format": "dummy"},
        mismatches={
            "dtype": ({"dtype": "float16"}, "dtype"),
            "model": ({"model": str(other)}, "model_config_digest"),
        },
        prompt=[4 + (i * 37) % 500 for i in range(300)],
        page_size=16,
        other_weights={"model": str(retrained)},
    )


class TestVLLMOnGPU(SnapshotRestoreConformance):
    pass


class TestVLLMMultiprocessOnGPU(SnapshotRestoreConformance):
    """vLLM's default multiprocess `LLM` on CUDA (TP 1: the worker runs in the engine core,
    reached through `thaw_call`); in-flight requests are not carried there."""

    @pytest.fixture(scope="class")
    def engine_under_test(self, engine_under_test):
        from dataclasses import replace

        return replace(engine_under_test, config={**engine_under_test.config, "thaw_engine": "multiprocess"},
                       carries_requests=False)


class TestAsyncLLMOnGPU(SnapshotRestoreConformance):
    """`AsyncLLM` on CUDA, the engine `vllm serve` runs."""

    @pytest.fixture(scope="class")
    def engine_under_test(self, engine_under_test):
        from dataclasses import replace

        spec = "thaw.adapters.vllm.async_driver:AsyncVLLMDriver"
        return replace(engine_under_test, driver=spec, fork_engine=spec, carries_requests=False)


class TestVLLMWorkerProcessOnGPU(SnapshotRestoreConformance):
    """vLLM's multiprocess executor on CUDA (`distributed_executor_backend="mp"`, what tensor
    parallel runs): the model and its KV in a worker process apart from the engine core;
    thaw's worker side gathers and scatters the pages there, checked on the host."""

    @pytest.fixture(scope="class")
    def engine_under_test(self, engine_under_test):
        from dataclasses import replace

        config = {**engine_under_test.config, "thaw_engine": "multiprocess", "distributed_executor_backend": "mp"}
        return replace(engine_under_test, config=config, carries_requests=False)
