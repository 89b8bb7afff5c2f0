"""vLLM's BlockPool, every call thaw makes on it (public and private alike), for one KV
cache group (group 0). Block hashes cross this boundary as bytes."""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import thaw_state


def on_new_block_pool(name: str, hook: Callable[[Any], None]) -> None:
    """Runs `hook(pool)` at the end of every vLLM BlockPool built from now on in this
    process (once per `name`, however often this is called)."""
    from vllm.v1.core.block_pool import BlockPool

    hooks = thaw_state.held(BlockPool, thaw_state.INIT_HOOKS)
    if hooks is None:
        hooks = {}
        original = BlockPool.__init__

        def init_then_hooks(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            for each in hooks.values():
                each(self)

        thaw_state.hold(BlockPool, thaw_state.INIT_HOOKS, hooks)
        BlockPool.__init__ = init_then_hooks
    hooks.setdefault(name, hook)


def cached_blocks(pool: Any) -> dict[bytes, Any]:
    """Every block the pool caches now, by its hash."""
    from vllm.v1.core.kv_cache_utils import get_block_hash, get_group_id

    out = {}
    for blk in pool.blocks:
        key = blk.block_hash
        if key is None or blk.is_null or get_group_id(key) != 0:
            continue
        out[bytes(get_block_hash(key))] = blk
    return out


def counts(pool: Any) -> dict[str, int]:
    return {"free_blocks": pool.get_num_free_blocks(), "num_blocks": pool.num_gpu_blocks,
            "cached_blocks": sum(1 for b in pool.blocks if b.block_hash is not None)}


def wrap_cache_full_blocks(pool: Any, wrapper: Callable[..., None]) -> Callable[..., None]:
    """Routes the pool's `cache_full_blocks` through `wrapper`; returns the original."""
    original = pool.cache_full_blocks
    pool.cache_full_blocks = wrapper
    return original


def unwrap_cache_full_blocks(pool: Any, original: Callable[..., None]) -> None:
    pool.cache_full_blocks = original


class PoolEdit:
    """What a restore does to the pool: find cached blocks, take fresh ones, register
    their hashes, and undo. Keys are made once from the hashes (group 0)."""

    def __init__(self, pool: Any, hashes: list[bytes]) -> None:
        from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

        self.pool = pool
        self.keys = [make_block_hash_with_group_id(h, 0) for h in hashes]

    def cached(self, page: int) -> Optional[Any]:
        return self.pool.cached_block_hash_to_block.get_one_block(self.keys[page])

    def free_count(self) -> int:
        return self.pool.get_num_free_blocks()

    def hold(self, blocks: list[Any]) -> None:
        """Keeps cached blocks from eviction while fresh ones are taken."""
        self.pool.touch(blocks)

    def take(self, n: int) -> list[Any]:
        return self.pool.get_new_blocks(n) if n else []

    def next_new(self, n: int, held: list[Any]) -> list[int]:
        """The ids `take(n)` will return once `held` are held, read without changing the
        pool: the free queue's first `n` blocks, `held` left out (as `hold` takes them out)."""
        skip = {b.block_id for b in held}
        queue = self.pool.free_block_queue
        ids: list[int] = []
        blk = queue.fake_free_list_head.next_free_block
        while len(ids) < n and blk is not None and blk is not queue.fake_free_list_tail:
            if blk.block_id not in skip:
                ids.append(blk.block_id)
            blk = blk.next_free_block
        return ids

    def forget(self, block_ids: list[int]) -> None:
        """Drops the cached hashes of free blocks whose bytes were overwritten (they are no
        longer what the hash says); blocks in use are not touched."""
        for block_id in block_ids:
            blk = self.pool.blocks[block_id]
            if blk.ref_cnt == 0:
                self.pool._maybe_evict_cached_block(blk)

    def register(self, page: int, block: Any, num_tokens: int) -> None:
        self.pool._insert_block_hash(self.keys[page], block, num_tokens=num_tokens)

    def evict(self, block: Any) -> None:
        self.pool._maybe_evict_cached_block(block)

    def release(self, blocks: list[Any]) -> None:
        self.pool.free_blocks(blocks)

    def drop_cached(self) -> int:
        """Drops every cached block hash from the prefix index (their bytes were computed
        with weights the engine no longer holds); returns how many. Blocks stay where they
        are: free ones go back to the free queue as plain free blocks."""
        dropped = 0
        for blk in self.pool.blocks:
            if blk.block_hash is not None and not blk.is_null:
                self.pool._maybe_evict_cached_block(blk)
                dropped += 1
        return dropped
