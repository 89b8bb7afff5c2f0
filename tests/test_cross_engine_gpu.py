"""vLLM <-> SGLang through the snapshot file on one CUDA device, both directions, with the
checks the CPU cross-engine suite makes (prefix hit, every translated K and V element, the
target's own cold greedy output, mismatched targets refused). vLLM 0.26 and SGLang 0.5.14
pin different transformers, so each engine's processes get their own packages: the
directories named by THAW_VLLM_PATH and THAW_SGLANG_PATH (on the GPU box, the unpacked
bundles /tmp/site and /tmp/sgsite). Skipped, with the reason, elsewhere."""

import os
from dataclasses import replace

import pytest
import torch

from thaw.conformance import CrossEngineConformance, EngineUnderTest
from thaw.core import CHECKPOINT_WEIGHTS
from thaw.testing.tiny_model import build_tiny_llama

from .test_sglang_gpu_conformance import GPU_MODEL
from .test_sglang_gpu_conformance import GPU_SETTINGS as SGLANG_GPU
from .test_vllm_gpu_conformance import GPU_SETTINGS as VLLM_GPU

PATHS = {"vllm": os.environ.get("THAW_VLLM_PATH", ""), "sglang": os.environ.get("THAW_SGLANG_PATH", "")}
pytestmark = [pytest.mark.engine, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device: CPU-only machine; runs on the GPU box"),
              pytest.mark.skipif(not all(PATHS.values()),
                                 reason="needs THAW_VLLM_PATH and THAW_SGLANG_PATH (each engine's packages; "
                                        "on the GPU box, the unpacked bundles)")]

# The GPU conformance suites' model and engine settings, one model file for both engines.
ENGINES = {
    "vllm": {"driver": "thaw.adapters.vllm.driver:VLLMDriver", "config": VLLM_GPU,
             # on CUDA its own snapshot format is its parameters; SGLang loads checkpoint tensors
             "cross_snapshot_args": {"weights_format": CHECKPOINT_WEIGHTS},
             # the bundle carries no FlashInfer; vLLM's sampler then falls back only if told to
             "env": {"VLLM_USE_FLASHINFER_SAMPLER": "0"}},
    "sglang": {"driver": "thaw.adapters.sglang.driver:SGLangDriver", "config": {**SGLANG_GPU, "page_size": 16}},
}
PROMPT = [4 + (i * 37) % 500 for i in range(300)]


@pytest.fixture(scope="module")
def gpu_engines(tmp_path_factory) -> dict[str, EngineUnderTest]:
    models = tmp_path_factory.mktemp("models")
    model = build_tiny_llama(models / "tiny", GPU_MODEL, dtype="bfloat16")
    other = build_tiny_llama(models / "other", replace(GPU_MODEL, num_hidden_layers=3), dtype="bfloat16")
    return {name: EngineUnderTest(
        driver=spec["driver"], config={"model": str(model), **spec["config"]},
        fresh_config={"load_format": "dummy"},
        mismatches={"dtype": ({"dtype": "float16"}, "dtype"),
                    "model": ({"model": str(other)}, "model_config_digest")},
        prompt=PROMPT, page_size=16, fork_engine=name, env={"PYTHONPATH": PATHS[name], **spec.get("env", {})},
        cross_snapshot_args=spec.get("cross_snapshot_args", {}))
        for name, spec in ENGINES.items()}


class GPUCrossRun(CrossEngineConformance):
    SOURCE = TARGET = ""

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, gpu_engines):
        return gpu_engines[cls.SOURCE]

    @pytest.fixture(scope="class")
    @classmethod
    def target(cls, gpu_engines):
        return gpu_engines[cls.TARGET]


class TestVLLMToSGLangOnGPU(GPUCrossRun):
    SOURCE, TARGET = "vllm", "sglang"


class TestSGLangToVLLMOnGPU(GPUCrossRun):
    SOURCE, TARGET = "sglang", "vllm"
