"""The parts of SGLang's `Scheduler` thaw reads, on the scheduler's thread between batches:
its KV pool, model runner, live and retiring requests, and the KV slots a request holds."""

from __future__ import annotations

from typing import Any

import torch

from .releases import req_kv


def kv_pool(s: Any) -> Any:
    """The scheduler's KV pool (K and V buffers per layer)."""
    return s.token_to_kv_pool_allocator.get_kvcache()


def model_runner(s: Any) -> Any:
    return s.tp_worker.model_runner


def running_requests(s: Any) -> list[Any]:
    """The running batch's requests, finished ones not yet retired included."""
    return list(s.running_batch.reqs)


def live_requests(s: Any) -> list[Any]:
    """Unfinished requests: the running batch's, then the waiting queue's."""
    running = [r for r in s.running_batch.reqs if not r.finished()]
    return running + [r for r in s.waiting_queue if r not in running]


def locked_slots(s: Any) -> int:
    """Cached KV slots that requests hold locked (`protected_size`)."""
    return int(s.tree_cache.protected_size())


def request_slots(s: Any, req: Any, num_tokens: int) -> torch.Tensor:
    """The KV slots of a request's first `num_tokens` tokens (int64, on the host)."""
    kv = req_kv(req)
    if not num_tokens:
        return torch.empty(0, dtype=torch.int64)
    return s.req_to_token_pool.req_to_token[kv.req_pool_idx, :num_tokens].to("cpu", torch.int64)


def committed_tokens(req: Any) -> int:
    """How many of a request's tokens have KV in the pool (0 for one without a pool slot)."""
    kv = req_kv(req)
    return int(kv.kv_committed_len) if kv.req_pool_idx is not None else 0
