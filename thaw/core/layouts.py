"""KV page layouts known by name, for converting snapshots without an engine installed.

Each entry builds the `KVLayout` an engine's adapter reports for a given page size, head
count, head dim and dtype. Adapters read the real layout from the engine (and refuse what
they do not recognise); this table only lets `thaw convert` write a snapshot for a target
engine that is not installed here.
"""

from __future__ import annotations

from typing import Callable

from .errors import SchemaError
from .kv_layout import KVLayout, KVPlane, nhd_layout


def vllm_cpu_vec(page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    """vLLM's CPU attention ('vec' kernels): per head, K transposed [head_dim, page], then V."""
    head = 2 * page_size * head_dim
    return KVLayout("vllm.cpu.vec", page_size, heads, head_dim, dtype,
                    KVPlane(0, 1, head, page_size), KVPlane(page_size * head_dim, head_dim, head, 1))


def vllm_flash_attn(page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    """vLLM's FlashAttention blocks as allocated by 0.26 (token-major, K then V per head)."""
    token, head = heads * 2 * head_dim, 2 * head_dim
    return KVLayout("vllm.flash_attn", page_size, heads, head_dim, dtype,
                    KVPlane(0, token, head, 1), KVPlane(head_dim, token, head, 1))


def sglang_nhd(page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    """SGLang's MHA pool rows gathered page by page: all K rows, then all V rows."""
    return nhd_layout(page_size, heads, head_dim, dtype, name="sglang.nhd")


def thaw_nhd(page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    return nhd_layout(page_size, heads, head_dim, dtype)


NAMED_LAYOUTS: dict[str, Callable[[int, int, int, str], KVLayout]] = {
    "vllm.cpu.vec": vllm_cpu_vec, "vllm.flash_attn": vllm_flash_attn,
    "sglang.nhd": sglang_nhd, "thaw.nhd": thaw_nhd,
}


def named_layout(name: str, page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    if name not in NAMED_LAYOUTS:
        raise SchemaError(f"unknown kv layout {name!r}; known: {sorted(NAMED_LAYOUTS)}")
    layout = NAMED_LAYOUTS[name](page_size, heads, head_dim, dtype)
    layout.validate()
    return layout
