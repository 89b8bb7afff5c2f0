"""Remembers the token ids behind every full block vLLM caches.

vLLM's block pool keeps only hashes. A recorder wraps one pool's ``cache_full_blocks`` so
each newly cached block's (parent hash, tokens, cache salt) is recorded under its hash.
thaw's ``vllm.general_plugins`` entry point (`thaw.adapters.vllm.plugin`) installs one on
every block pool as vLLM builds it, so an `attach` at any time finds every cached block's
tokens. Where the plugin did not run (``VLLM_PLUGINS`` excludes it), `attach` installs
one itself; blocks cached before then have no record and snapshots report them.

Memory stays bounded by the pool: once the records outnumber twice the pool's blocks,
records of blocks no longer cached are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .engine_access import cached_blocks, thaw_state, unwrap_cache_full_blocks, wrap_cache_full_blocks


@dataclass(frozen=True)
class BlockRecord:
    parent: Optional[bytes]
    tokens: tuple[int, ...]
    extra_key: Optional[str]  # "cache_salt:<salt>" on a salted first block, else None
    supported: bool  # False for LoRA / multimodal / prompt-embeds blocks


class BlockTokenRecorder:
    """Installed on one BlockPool; `records` maps block hash -> BlockRecord.

    `since_pool_start` is True when it was installed as the pool was built (the plugin),
    so no cached block can lack a record."""

    def __init__(self, block_pool: Any, block_size: int, *, since_pool_start: bool = False) -> None:
        self.block_pool = block_pool
        self.block_size = block_size
        self.since_pool_start = since_pool_start
        self.records: dict[bytes, BlockRecord] = {}
        self.prune_above = 2 * int(getattr(block_pool, "num_gpu_blocks", 0)) + 64
        self._original = wrap_cache_full_blocks(block_pool, self._cache_full_blocks)
        thaw_state.hold(block_pool, thaw_state.RECORDER, self)

    @classmethod
    def of_pool(cls, block_pool: Any, block_size: int) -> "BlockTokenRecorder":
        """The pool's recorder: the one installed when it was built, else a new one."""
        existing = thaw_state.held(block_pool, thaw_state.RECORDER)
        if existing is not None and existing.block_size == block_size:
            return existing
        if existing is not None:
            existing.detach()
        return cls(block_pool, block_size)

    def _cache_full_blocks(self, request: Any, blocks: list[Any], num_cached_blocks: int,
                           num_full_blocks: int, *args: Any, **kwargs: Any) -> None:
        self._original(request, blocks, num_cached_blocks, num_full_blocks, *args, **kwargs)
        hashes = request.block_hashes
        tokens = request.all_token_ids
        bs = self.block_size
        supported = not (request.lora_request or request.mm_features
                         or getattr(request, "prompt_embeds", None) is not None)
        for i in range(num_cached_blocks, min(num_full_blocks, len(hashes))):
            if blocks[i].is_null:
                continue
            salt = request.cache_salt if i == 0 and request.cache_salt else None
            self.records[bytes(hashes[i])] = BlockRecord(
                parent=bytes(hashes[i - 1]) if i else None,
                tokens=tuple(tokens[i * bs:(i + 1) * bs]),
                extra_key=f"cache_salt:{salt}" if salt else None,
                supported=supported,
            )
        if len(self.records) > self.prune_above:
            self.prune(self.live_hashes())

    def live_hashes(self) -> set[bytes]:
        """Hashes of the blocks the pool caches now (KV cache group 0)."""
        return set(cached_blocks(self.block_pool))

    def add(self, block_hash: bytes, record: BlockRecord) -> None:
        self.records[block_hash] = record

    def prune(self, live: set[bytes]) -> None:
        """Forgets records of blocks no longer cached."""
        self.records = {h: r for h, r in self.records.items() if h in live}

    def detach(self) -> None:
        unwrap_cache_full_blocks(self.block_pool, self._original)
        if thaw_state.held(self.block_pool, thaw_state.RECORDER) is self:
            thaw_state.drop(self.block_pool, thaw_state.RECORDER)
