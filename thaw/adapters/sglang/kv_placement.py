"""Where an SGLang restore puts KV pages: fresh slots of the KV pool, inserted into the radix
cache last (`SlotPlacement`, the restore transaction's `KVPlacement`), and the cache
operations under it.

Contract: call only while nothing else uses the cache (inside the scheduler's own thread,
between batches). `check_room` and `plan_inserts` only look; `reserve_tree` refuses before
changing anything when the cache cannot make room and takes fresh slots from the allocator,
which the placement's writes fill (no radix node names them yet: `release` gives them
back); its `commit` inserts with `prev_prefix_len` equal to the prefix already held, so no
slot is freed twice.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, Optional

import torch

from thaw.core import KVLayout, PrefixTree, ROOT, StateSnapshot, ThawError, convert_pages

from .capture import check_supported
from .namespaces import decode_namespace
from .pool_writes import PoolWrites
from . import engine_access, gpu_pages
from .engine_access import kv_pool, unified_tree
from .prepared import PreparedFiles


@dataclass
class PathInsert:
    """One token path to put into the tree: `tokens[start:]` are new, with KV in `pages`."""

    tokens: list[int]
    namespace: Optional[str]
    start: int
    pages: list[int]  # snapshot pages holding tokens[start:]


def plan_inserts(tree_cache: Any, tree: PrefixTree, reuse_cached: bool = True) -> list[PathInsert]:
    """For every snapshot node (parents first), the part the target will not hold yet when
    the node's turn to be inserted comes; with `reuse_cached=False` (the cache is to be
    dropped before the commit: `drop_cached`) nothing the target holds counts.

    Only looks: `match_prefix` may split a node of the target, which SGLang documents as
    a structural refinement that changes no cached content.
    """
    p = tree.page_size
    depths = tree.depths()
    keys = tree.keys()
    plans = []
    for i, tokens, pages in tree.walk():
        held = match_length(tree_cache, tokens, keys[i]) if reuse_cached else 0
        parent_depth = depths[tree.nodes[i].parent] if tree.nodes[i].parent != ROOT else 0
        # Earlier nodes are inserted first, so what they share with this path is held then.
        start = max(held, parent_depth, tree.shared_prefix(tokens, keys[i], before=i))
        if start >= len(tokens):
            continue
        plans.append(PathInsert(tokens, keys[i], start, pages[start // p:]))
    return plans


def radix_key(tokens: list[int], namespace: Optional[str]) -> Any:
    extra, salt = decode_namespace(namespace)
    return engine_access.radix_key(array("q", tokens), extra, salt)


def match_length(tree_cache: Any, tokens: list[int], namespace: Optional[str]) -> int:
    return len(match_indices(tree_cache, tokens, namespace))


def match_indices(tree_cache: Any, tokens: list[int], namespace: Optional[str]) -> torch.Tensor:
    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

    return tree_cache.match_prefix(MatchPrefixParams(key=radix_key(tokens, namespace))).device_indices


def free_slots(tree_cache: Any) -> int:
    return int(tree_cache.token_to_kv_pool_allocator.available_size())


def evictable_slots(tree_cache: Any) -> int:
    return int(tree_cache.evictable_size())


def make_room(tree_cache: Any, needed: int) -> None:
    """Evicts unlocked cached prefixes until `needed` slots are free; refuses first if the
    cache cannot hold them even then."""
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    refuse_without_room(tree_cache, needed)
    free = free_slots(tree_cache)
    if needed > free:
        tree_cache.evict(EvictParams(num_tokens=needed - free))
    if free_slots(tree_cache) < needed:
        raise ThawError(f"evicting cached prefixes freed only {free_slots(tree_cache)} of the "
                        f"{needed} KV slots the snapshot needs")


def allocate(tree_cache: Any, num_tokens: int) -> torch.Tensor:
    slots = tree_cache.token_to_kv_pool_allocator.alloc(num_tokens)
    if slots is None:
        raise ThawError(f"SGLang's allocator refused {num_tokens} KV slots")
    return slots


def insert_paths(tree_cache: Any, plans: list[PathInsert], slots: torch.Tensor) -> None:
    """Inserts each planned path; `slots` holds the new tokens of all plans, in order. If an
    insert fails, the slots of that plan and every later one go back to the allocator (the
    paths inserted before it are whole, valid cache entries and stay)."""
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams

    unified = unified_tree(tree_cache)
    offset = 0
    for plan in plans:
        new = slots[offset: offset + len(plan.tokens) - plan.start]
        try:
            held = match_indices(tree_cache, plan.tokens, plan.namespace)[: plan.start]
            if len(held) != plan.start:
                raise ThawError(f"radix path of {len(plan.tokens)} tokens: expected {plan.start} tokens "
                                f"already inserted, found {len(held)}")
            value = torch.cat([held.to(new.device, torch.int64), new.to(torch.int64)])
            result = tree_cache.insert(InsertParams(key=radix_key(plan.tokens, plan.namespace),
                                                    value=value, prev_prefix_len=plan.start))
        except BaseException:
            tree_cache.token_to_kv_pool_allocator.free(slots[offset:])
            raise
        offset += len(new)
        if not unified and result.prefix_len > plan.start:
            # The legacy tree keeps its own copy of a prefix that appeared meanwhile; the
            # duplicate slots are ours to free (the unified tree frees them itself).
            tree_cache.token_to_kv_pool_allocator.free(value[plan.start: result.prefix_len])


def check_room(tree_cache: Any, tree: PrefixTree, reuse_cached: bool = True) -> None:
    """Raises before anything changes when the cache cannot hold the tree's new tokens even
    after evicting every unlocked prefix."""
    plans = plan_inserts(tree_cache, tree, reuse_cached)
    refuse_without_room(tree_cache, sum(len(p.tokens) - p.start for p in plans))


def drop_cached(tree_cache: Any) -> None:
    """Evicts every cached prefix (their KV was computed with weights the engine no longer
    holds). Only while no request holds a prefix (the caller refused running ones); slots
    reserved by a `TreePlacement` are no node's and stay."""
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    evictable = evictable_slots(tree_cache)
    if evictable:
        tree_cache.evict(EvictParams(num_tokens=evictable))
    if evictable_slots(tree_cache) or int(tree_cache.protected_size()):
        raise ThawError(f"dropping the radix cache left {evictable_slots(tree_cache)} evictable and "
                        f"{int(tree_cache.protected_size())} locked slots cached")


def refuse_without_room(tree_cache: Any, needed: int) -> None:
    free, evictable = free_slots(tree_cache), evictable_slots(tree_cache)
    if needed > free + evictable:
        raise ThawError(f"the snapshot needs {needed} KV slots; this engine has {free} free and "
                        f"{evictable} evictable (raise max_total_tokens / mem_fraction_static)")


class TreePlacement:
    """A snapshot's tree given fresh KV slots that no radix node names yet (`reserve_tree`),
    its pages written into them (`write_layer`, `write`), then made cache hits (`commit`)
    or given back (`release`). Until `commit` the engine serves exactly as before: nothing
    it can look up has changed."""

    def __init__(self, tree_cache: Any, plans: list[PathInsert], slots: Optional[torch.Tensor],
                 writes: Optional[PoolWrites]) -> None:
        self.tree_cache, self.plans, self.slots, self.writes = tree_cache, plans, slots, writes
        self.new_tokens = 0 if slots is None else int(slots.numel())

    def write_layer(self, layer: int, pages: torch.Tensor) -> None:
        """One layer's snapshot pages (all of them, [num_pages, page_elems]) into the slots."""
        if self.writes is not None:
            self.writes.write_layer(layer, pages)

    def write(self, layer_pages: list[torch.Tensor]) -> None:
        for layer, pages in enumerate(layer_pages):
            self.write_layer(layer, pages)

    def commit(self) -> int:
        """Inserts the paths; returns how many tokens were new."""
        if self.slots is not None:
            slots, self.slots = self.slots, None
            insert_paths(self.tree_cache, self.plans, slots)
        return self.new_tokens

    def release(self) -> None:
        if self.slots is not None:
            self.tree_cache.token_to_kv_pool_allocator.free(self.slots)
            self.slots = None


def reserve_tree(tree_cache: Any, kv_pool: Any, tree: PrefixTree, num_pages: int,
                 reuse_cached: bool = True) -> TreePlacement:
    """Fresh slots for the paths of `tree` (whose KV is `num_pages` snapshot pages) that the
    cache lacks (with `reuse_cached=False`: for all of them); writes nothing. Raises before
    changing anything when the cache cannot make room; evicts unlocked prefixes only when
    that makes enough room."""
    check_supported(tree_cache)
    for _ in range(8):
        plans = plan_inserts(tree_cache, tree, reuse_cached)
        needed = sum(len(p.tokens) - p.start for p in plans)
        if needed <= free_slots(tree_cache):
            break
        make_room(tree_cache, needed)  # may evict prefixes the plan counted on: plan again
    else:
        raise ThawError("could not make room for the snapshot's KV: eviction kept dropping "
                        "prefixes the snapshot shares")
    if not plans:
        return TreePlacement(tree_cache, [], None, None)
    slots = allocate(tree_cache, needed)
    try:
        ids = torch.tensor([page for plan in plans for page in plan.pages], dtype=torch.int64)
        every_page_in_order = len(ids) == num_pages and torch.equal(ids, torch.arange(len(ids)))
        writes = PoolWrites(kv_pool, slots, None if every_page_in_order else ids)
    except BaseException:
        tree_cache.token_to_kv_pool_allocator.free(slots)
        raise
    return TreePlacement(tree_cache, plans, slots, writes)


def place_tree(tree_cache: Any, kv_pool: Any, tree: PrefixTree, layer_pages: list[torch.Tensor]) -> TreePlacement:
    """`reserve_tree`, then every layer's pages ([num_pages, page_elems] each, checked; on
    the host or on the pool's device) written into the slots."""
    placement = reserve_tree(tree_cache, kv_pool, tree, len(layer_pages[0]) if layer_pages else 0)
    try:
        placement.write(layer_pages)
    except BaseException:
        placement.release()
        raise
    return placement


def restore_tree(tree_cache: Any, kv_pool: Any, tree: PrefixTree, layer_pages: list[torch.Tensor]) -> int:
    """`place_tree` then `commit`: the tree's new tokens are cache hits; returns their count."""
    return place_tree(tree_cache, kv_pool, tree, layer_pages).commit()


class SlotPlacement:
    """The tree's new tokens in fresh slots (`allocate`: may evict unlocked prefixes), each
    KV layer written into them as it is read and checked (`write`), inserted into the radix
    cache last (`register`); `rollback` gives the slots back. Nothing the engine can look up
    changes before `register`."""

    def __init__(self, s: Any, snap: StateSnapshot, tree: PrefixTree, layout: KVLayout, files: PreparedFiles,
                 cold_files: dict[str, bool], reuse_cached: bool) -> None:
        self.s, self.snap, self.tree, self.layout, self.files = s, snap, tree, layout, files
        self.cold_files, self.reuse_cached = cold_files, reuse_cached
        self.pool = kv_pool(s)
        self.slots: Optional[TreePlacement] = None
        self.kv_from: Optional[str] = None
        self.new_tokens = 0
        check_room(s.tree_cache, tree, reuse_cached=reuse_cached)

    def stage(self) -> None:
        """Nothing: each chunk is checked as it is written into slots no node names."""

    def allocate(self) -> None:
        self.slots = reserve_tree(self.s.tree_cache, self.pool, self.tree, self.snap.kv.num_pages,
                                                reuse_cached=self.reuse_cached)

    def write(self) -> None:
        """The snapshot's KV into the slots; raises ChecksumError on a bad chunk."""
        snap, layout, pool, slots, files = self.snap, self.layout, self.pool, self.slots, self.files
        held_in = snap.kv.layers[0].container
        # (a file on this machine: one read from object storage is checked on the host)
        from_file = gpu_pages.file_pages_fit(snap, layout, pool) and held_in is not None and held_in.is_local
        kept = files.resident_pages(held_in) if from_file else None
        if kept is not None:
            slots.write(kept)  # checked when `prepare(kv_on_device=True)` uploaded them
            self.kv_from = "device, checked when prepared"
            return
        # Registering a file mostly outside the page cache would read all of it, weights
        # too, a page at a time: its KV is then read through the mapping, its weights streamed.
        cold = from_file and self.cold_files.get(held_in.path, False)
        if from_file and not cold:
            # A CUDA pool: each layer uploaded from the page cache through the kept staging
            # ring, checked on the GPU and written into the slots on the stream its check
            # ran on, while later layers upload.
            reg = files.registered(held_in)
            ring = files.staging_ring(reg, gpu_pages.kv_sections(snap), pool.k_buffer[0].device)
            gpu_pages.write_checked_pages(snap, reg, ring, slots.write_layer)
            self.kv_from = "file, checked on the GPU"
            return
        # Verified read-only views of the file where it is mapped (no copy when the layout is
        # the engine's), copied into the slots.
        slots.write([convert_pages(layer.mapped(), snap.kv.layout, layout) for layer in snap.kv.layers])
        self.kv_from = "host, checked there" + (" (the file is mostly outside the page cache)" if cold else "")

    def register(self) -> None:
        self.new_tokens = self.slots.commit()

    def rollback(self) -> None:
        if self.slots is not None:
            self.slots.release()  # a no-op once committed
