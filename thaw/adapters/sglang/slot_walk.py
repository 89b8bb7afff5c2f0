"""Capturing SGLang's Rust tree core, whose nodes cannot be read from Python.

Two engine-provided facts are joined: the tree core's `walk_for_kv_canary` lists every
device slot in the tree with its position and the slot before it, and an insert recorder
(installed on `UnifiedRadixCache.insert` by thaw's plugin before the scheduler builds its
cache) remembers which token id and namespace each slot was inserted for. A slot with no
recorded token is reported, never guessed: its page and everything below it is skipped.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from thaw.core import PrefixTree, ROOT

from .engine_access import slot_walk
from .namespaces import encode_namespace
from .scheduler_state import RECORDING_ATTRIBUTE, SLOT_TOKENS_ATTRIBUTE



class SlotTokens:
    """Token id and namespace last inserted into the tree for each KV slot (-1: unknown)."""

    def __init__(self, num_slots: int) -> None:
        self.tokens = torch.full((num_slots,), -1, dtype=torch.int64)
        self.namespace = torch.full((num_slots,), -1, dtype=torch.int32)
        self.namespaces: list[Optional[str]] = []

    def record(self, tokens: list[int], slots: torch.Tensor, namespace: Optional[str]) -> None:
        n = min(len(tokens), len(slots))
        if namespace not in self.namespaces:
            self.namespaces.append(namespace)
        ids = slots[:n].to("cpu", torch.int64)
        self.tokens[ids] = torch.tensor(tokens[:n], dtype=torch.int64)
        self.namespace[ids] = self.namespaces.index(namespace)


def install_insert_recorder(cache_cls: type) -> None:
    """Wraps `cache_cls.insert` so that every successful insert records its slots' tokens.
    Idempotent. The wrapped insert's behaviour and result are unchanged."""
    original = cache_cls.insert
    if getattr(original, RECORDING_ATTRIBUTE, False):
        return

    @functools.wraps(original)
    def insert(self: Any, params: Any) -> Any:
        result = original(self, params)
        if params.key is not None and params.value is not None and not params.key.is_bigram:
            rec = getattr(self, SLOT_TOKENS_ATTRIBUTE, None)
            if rec is None:
                rec = SlotTokens(self.token_to_kv_pool_allocator.get_kvcache().k_buffer[0].shape[0])
                setattr(self, SLOT_TOKENS_ATTRIBUTE, rec)
            key = params.key
            rec.record(list(key.raw_token_ids()), params.value,
                       encode_namespace(key.extra_key, getattr(key, "cache_salt", None)))
        return result

    setattr(insert, RECORDING_ATTRIBUTE, True)
    cache_cls.insert = insert


def capture_from_slot_walk(tree_cache: Any, page_size: int) -> tuple[PrefixTree, list[int], int]:
    """The device-resident tree as a PrefixTree, one node per unbranched run of pages; with
    the pool page of each snapshot page and the tokens skipped (see `capture.CacheCapture`)."""
    rec: SlotTokens = getattr(tree_cache, SLOT_TOKENS_ATTRIBUTE, None) or SlotTokens(0)
    walk = slot_walk(tree_cache)
    slots = walk.slot_indices.tolist()
    prev = dict(zip(slots, walk.prev_slot_indices.tolist()))
    pos = dict(zip(slots, walk.positions.tolist()))
    p = page_size
    # A pool page is a unit of the tree; its parent page holds the slot before its first.
    children: dict[int, list[int]] = {}
    for slot in slots:
        if pos[slot] % p == 0:
            before = prev[slot]
            children.setdefault(before // p if before >= 0 else ROOT, []).append(slot // p)

    def known(page: int) -> bool:
        if (page + 1) * p > len(rec.tokens):
            return False
        return bool((rec.tokens[page * p: (page + 1) * p] >= 0).all())

    tree, pool_pages, skipped = PrefixTree(p), [], 0
    stack = [(page, ROOT) for page in sorted(children.get(ROOT, []))]
    while stack:
        page, parent = stack.pop()
        if not known(page):
            skipped += _pages_below(children, page) * p
            continue
        run = [page]  # follow the chain while it does not branch
        while len(children.get(run[-1], [])) == 1 and known(children[run[-1]][0]):
            run.append(children[run[-1]][0])
        ids = torch.tensor([q * p + i for q in run for i in range(p)])
        namespace = rec.namespaces[int(rec.namespace[ids[0]])]
        parent_key = tree.key_of(parent) if parent != ROOT else None
        first = len(pool_pages)
        pool_pages.extend(run)
        me = tree.add(parent, rec.tokens[ids].tolist(), list(range(first, first + len(run))),
                      namespace if namespace != parent_key else None)
        for child in children.get(run[-1], []):
            stack.append((child, me))
    return tree, pool_pages, skipped


def _pages_below(children: dict[int, list[int]], page: int) -> int:
    total, stack = 0, [page]
    while stack:
        q = stack.pop()
        total += 1
        stack.extend(children.get(q, []))
    return total
