"""Remembers the token ids behind every full block vLLM caches.

vLLM's block pool keeps only hashes. `attach` wraps the pool's ``cache_full_blocks`` so
each newly cached block's (parent hash, tokens, cache salt) is recorded under its hash.
Blocks cached before `attach` have no record and are reported by snapshots, not dropped
silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class BlockRecord:
    parent: Optional[bytes]
    tokens: tuple[int, ...]
    extra_key: Optional[str]  # "cache_salt:<salt>" on a salted first block, else None
    supported: bool  # False for LoRA / multimodal / prompt-embeds blocks


class BlockTokenRecorder:
    """Installed on one BlockPool; `records` maps block hash -> BlockRecord."""

    def __init__(self, block_pool: Any, block_size: int) -> None:
        self.block_pool = block_pool
        self.block_size = block_size
        self.records: dict[bytes, BlockRecord] = {}
        self._original = block_pool.cache_full_blocks
        block_pool.cache_full_blocks = self._cache_full_blocks

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

    def add(self, block_hash: bytes, record: BlockRecord) -> None:
        self.records[block_hash] = record

    def prune(self, live: set[bytes]) -> None:
        """Forgets records of blocks no longer cached."""
        self.records = {h: r for h, r in self.records.items() if h in live}

    def detach(self) -> None:
        self.block_pool.cache_full_blocks = self._original
