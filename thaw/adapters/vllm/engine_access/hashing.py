"""vLLM's block hashes: thaw's derivation with the engine's own hash function, and the
engine's own request hasher to check that derivation against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .engine import EngineParts

BlockHasher = Callable[[Optional[bytes], list[int], Optional[tuple]], bytes]


def block_hasher(parts: "EngineParts") -> BlockHasher:
    """hash(parent hash or None, the block's tokens, extra keys or None) -> the block hash,
    with the hash function this engine is configured with."""
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import hash_block_tokens

    fn = get_hash_fn_by_name(parts.core.vllm_config.cache_config.prefix_caching_hash_algo)

    def hash_block(parent: Optional[bytes], tokens: list[int], extra: Optional[tuple]) -> bytes:
        return bytes(hash_block_tokens(fn, parent, tokens, extra))

    return hash_block


def engine_block_hashes(parts: "EngineParts", tokens: list[int], cache_salt: Optional[str]) -> list[bytes]:
    """The block hashes the engine itself gives a request of `tokens` (its request hasher)."""
    from vllm import SamplingParams
    from vllm.v1.request import Request

    req: Any = Request("thaw-hash-check", tokens, SamplingParams(max_tokens=1), None,
                       cache_salt=cache_salt, block_hasher=parts.core.request_block_hasher)
    return [bytes(h) for h in req.block_hashes]
