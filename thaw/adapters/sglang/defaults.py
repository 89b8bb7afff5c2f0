"""The engine settings thaw's drivers, test servers and examples start SGLang with."""

from __future__ import annotations

from typing import Any

# The settings under which SGLang 0.5.21 serves on a CPU-only machine (see the README).
ENGINE_DEFAULTS: dict[str, Any] = {
    "device": "cpu", "attention_backend": "torch_native", "model_impl": "transformers",
    "sampling_backend": "pytorch", "disable_cuda_graph": True, "disable_overlap_schedule": True,
    "grammar_backend": "none", "dtype": "float32", "max_total_tokens": 4096,
    "skip_tokenizer_init": True, "random_seed": 0, "log_level": "error",
}
CPU_ENV = {"SGLANG_USE_CPU_ENGINE": "0"}  # the CPU engine needs a sgl_kernel build not on PyPI
