"""The engine settings thaw's drivers, test servers and examples start vLLM with (CPU, tiny models)."""

from __future__ import annotations

from typing import Any

ENGINE_DEFAULTS: dict[str, Any] = {
    "dtype": "float32", "enforce_eager": True, "enable_prefix_caching": True,
    "max_model_len": 2048, "seed": 0, "block_size": 32,
    "kv_cache_memory_bytes": 64 * 2**20, "skip_tokenizer_init": True,
}
