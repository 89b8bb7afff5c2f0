"""KV page layouts known by name, for converting snapshots without an engine installed.

Each entry builds the `KVLayout` an engine's adapter reports for a given page size, head
count, head dim and dtype. Adapters read the real layout from the engine (and refuse what
they do not recognise); this table only lets `thaw convert` write a snapshot for a target
engine that is not installed here.
"""

from __future__ import annotations

from typing import Callable

from .dtypes import ITEMSIZE, check_dtype_name
from .errors import SchemaError
from .kv_layout import KVLayout, KVPlane, nhd_layout


def vllm_cpu_vec(page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    """vLLM's CPU attention with the 'vec', 'vec16' and 'neon' kernels (one block interior):
    per head, K transposed [head_dim, page], then V [page, head_dim]."""
    head = 2 * page_size * head_dim
    return KVLayout("vllm.cpu.vec", page_size, heads, head_dim, dtype,
                    KVPlane(0, 1, head, page_size), KVPlane(page_size * head_dim, head_dim, head, 1))


AMX_TILE_ROW_BYTES = 64
"""One row of an AMX tile; vLLM's AMX blocks are cut to it."""


def vllm_cpu_amx(page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    """vLLM's CPU attention with AMX tiles (bfloat16): per head, K then V, each packed for
    AMX B tiles. K: groups of 16 tokens; inside one, each 4-byte pair of dims of a token is
    a unit, token-minor. V: groups of 16 dims, each a [tokens/2, 16, 2] tile column, pairs
    of tokens innermost. Transcribed from the kernel's `reshape_and_cache` (vLLM
    csrc/cpu/cpu_attn_amx.hpp) and checked against that kernel where the wheel has it."""
    itemsize = ITEMSIZE[check_dtype_name(dtype)]
    if itemsize != 2:
        raise SchemaError(f"vllm.cpu.amx: AMX blocks hold 2-byte elements, not {dtype}")
    pair = 4 // itemsize                       # elements per 4-byte unit
    k_tokens = AMX_TILE_ROW_BYTES // 4         # tokens per K group (16)
    v_dims = AMX_TILE_ROW_BYTES // 4           # dims per V group (16)
    if page_size % (AMX_TILE_ROW_BYTES // itemsize) or head_dim % v_dims:
        raise SchemaError(f"vllm.cpu.amx: page size {page_size} must be a multiple of "
                          f"{AMX_TILE_ROW_BYTES // itemsize} and head_dim {head_dim} of {v_dims}")
    head = 2 * page_size * head_dim
    k = KVPlane(offset=0, token_stride=pair, head_stride=head, dim_stride=1,
                token_group=k_tokens, token_group_stride=k_tokens * head_dim,
                dim_group=pair, dim_group_stride=k_tokens * pair)
    v = KVPlane(offset=page_size * head_dim, token_stride=1, head_stride=head, dim_stride=pair,
                token_group=pair, token_group_stride=v_dims * pair,
                dim_group=v_dims, dim_group_stride=page_size * v_dims)
    return KVLayout("vllm.cpu.amx", page_size, heads, head_dim, dtype, k, v)


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
    "vllm.cpu.vec": vllm_cpu_vec, "vllm.cpu.amx": vllm_cpu_amx, "vllm.flash_attn": vllm_flash_attn,
    "sglang.nhd": sglang_nhd, "thaw.nhd": thaw_nhd,
}


def named_layout(name: str, page_size: int, heads: int, head_dim: int, dtype: str) -> KVLayout:
    if name not in NAMED_LAYOUTS:
        raise SchemaError(f"unknown kv layout {name!r}; known: {sorted(NAMED_LAYOUTS)}")
    layout = NAMED_LAYOUTS[name](page_size, heads, head_dim, dtype)
    layout.validate()
    return layout
