"""SGLang's radix cache and KV pool, to and from the neutral prefix tree and KV pages.

Works on the cache objects themselves (no scheduler, no engine): a radix cache
(`RadixCache`, or `UnifiedRadixCache` with the Python tree core), its token-to-KV
allocator and its `MHATokenToKVPool`. A snapshot page is `page_size` consecutive pool
slots starting at a multiple of `page_size` (SGLang's own page); its bytes are all K
rows of the page, then all V rows, token-major (layout "sglang.nhd").

Contract: call these only while nothing else uses the cache (inside the scheduler's own
thread, between batches). Capture reads only; restoring is in `kv_placement`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from thaw.core import EngineUnsupported, KVLayout, PrefixTree, ROOT, ThawError, nhd_layout
from thaw.core.dtypes import dtype_name

from .engine_access import (PYTHON_TREE_CORE, component_type, device_value, tree_core_backend, tree_root, unified_tree,
                            walks_nodes)
from . import gpu_pages
from .scheduler_state import RECORDING_ATTRIBUTE
from .slot_walk import capture_from_slot_walk
from .namespaces import decode_namespace, encode_namespace  # noqa: F401  (what callers import from here)
from .gpu_pages import on_cuda

LAYOUT_NAME = "sglang.nhd"
TREE_CORE_SETTING = PYTHON_TREE_CORE


def check_supported(tree_cache: Any) -> None:
    """Raises EngineUnsupported when the cache is of a kind this module cannot translate."""
    if getattr(tree_cache, "disable", False):
        raise EngineUnsupported("SGLang's radix cache is disabled (disable_radix_cache); "
                                "there is no prefix index to snapshot or restore")
    if getattr(tree_cache, "is_eagle", False):
        raise EngineUnsupported("SGLang radix caches keyed by EAGLE bigrams are not supported")
    if unified_tree(tree_cache):
        if tuple(tree_cache.tree_components) != (component_type().FULL,):
            raise EngineUnsupported(f"SGLang tree components {tree_cache.tree_components} "
                                    "(sliding window / mamba state) are not supported; full "
                                    "attention KV only")
    if not walks_nodes(tree_cache) and not getattr(type(tree_cache).insert, RECORDING_ATTRIBUTE, False):
        raise EngineUnsupported(
            f"SGLang's radix tree uses the {tree_core_backend(tree_cache)!r} tree core, whose "
            "nodes hold no token ids readable from Python, and thaw's insert recorder was not "
            "installed when this cache was built (thaw's SGLang plugin installs it in the "
            f"scheduler process); start the engine with thaw installed, or with {TREE_CORE_SETTING}")


def kv_layout(kv_pool: Any, page_size: int) -> KVLayout:
    k = kv_pool.k_buffer[0]
    return nhd_layout(page_size, k.shape[1], k.shape[2], dtype_name(k.dtype), name=LAYOUT_NAME)


# -- capture ----------------------------------------------------------------------------
@dataclass
class CacheCapture:
    tree: PrefixTree
    pool_pages: list[int]  # snapshot page i is pool page pool_pages[i]
    tokens_skipped: int = 0  # evicted from the device, or (Rust core) never recorded


def capture_tree(tree_cache: Any, page_size: int) -> CacheCapture:
    """The tree's device-resident nodes, parents first, as a neutral PrefixTree."""
    check_supported(tree_cache)
    if not walks_nodes(tree_cache):
        return CacheCapture(*capture_from_slot_walk(tree_cache, page_size))
    tree = PrefixTree(page_size)
    pool_pages: list[int] = []
    skipped = 0
    stack: list[tuple[Any, int]] = [(c, ROOT) for c in tree_root(tree_cache).children.values()]
    while stack:
        node, parent = stack.pop()
        value = device_value(tree_cache, node)
        if value is None:
            skipped += _subtree_tokens(node)
            continue
        slots = value.to("cpu", torch.int64)
        if len(slots) % page_size or (page_size > 1 and bool((slots[::page_size] % page_size).any())):
            raise ThawError(f"radix node {node.id}: {len(slots)} slots are not whole pages of {page_size}")
        pages = (slots[::page_size] // page_size).tolist()
        first = len(pool_pages)
        pool_pages.extend(pages)
        key = node.key
        tokens = list(key.raw_token_ids())
        namespace = encode_namespace(key.extra_key, getattr(key, "cache_salt", None))
        parent_key = tree.key_of(parent) if parent != ROOT else None
        me = tree.add(parent, tokens, list(range(first, first + len(pages))),
                      namespace if namespace != parent_key else None)
        stack.extend((c, me) for c in node.children.values())
    return CacheCapture(tree, pool_pages, skipped)


def _subtree_tokens(node: Any) -> int:
    total, stack = 0, [node]
    while stack:
        n = stack.pop()
        total += len(n.key)
        stack.extend(n.children.values())
    return total


def slots_of_pages(pool_pages: list[int], page_size: int) -> torch.Tensor:
    pages = torch.tensor(pool_pages, dtype=torch.int64)
    return (pages[:, None] * page_size + torch.arange(page_size)).reshape(-1)


def gather_pages(kv_pool: Any, pool_pages: list[int], page_size: int) -> list[torch.Tensor]:
    """Every layer's pages in one indexed read per K and V buffer: [n, page_elems] each, on
    the host (a CUDA pool's through the CUDA movers, see `gpu_pages.gather`)."""
    if on_cuda(kv_pool):
        return gpu_pages.gather(kv_pool, pool_pages, page_size)[0]
    slots = slots_of_pages(pool_pages, page_size).to(kv_pool.k_buffer[0].device)
    n = len(pool_pages)
    plane = page_size * kv_pool.k_buffer[0][0].numel()
    out = []
    for k, v in zip(kv_pool.k_buffer, kv_pool.v_buffer):
        rows = torch.cat([k.index_select(0, slots).reshape(n, plane),
                          v.index_select(0, slots).reshape(n, plane)], dim=1)
        out.append(rows.cpu())
    return out
