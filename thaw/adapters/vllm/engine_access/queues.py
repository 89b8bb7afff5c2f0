"""The requests an engine core's scheduler holds, by queue, and what a snapshot of them
would lose: the only place that reads vLLM's scheduler queues and request objects."""

from __future__ import annotations

from typing import Any

from ...request_fields import changed_fields
from .engine import EngineParts
from .requests import OUTPUT_ONLY_SAMPLING_FIELDS


def queued_requests(parts: EngineParts) -> list[tuple[str, Any]]:
    """(queue, request) for every request the scheduler holds: running first, then waiting."""
    sched = parts.scheduler
    return [("running", r) for r in list(sched.running)] + [("waiting", r) for r in list(sched.waiting)]


def request_block_ids(parts: EngineParts, internal_id: str) -> list[int]:
    """The KV blocks a request holds (its first KV cache group's)."""
    return list(parts.scheduler.kv_cache_manager.get_block_ids(internal_id)[0])


def uncarried_request_features(parts: EngineParts, req: Any, carried: tuple[str, ...]) -> list[str]:
    """What an in-flight vLLM request uses that a snapshot of `carried` sampling fields
    would lose: every SamplingParams field set away from its default (other than those
    carried, derived `_` fields and output-only ones), membership in an n > 1 request
    (vLLM fans those out into children with n=1), and LoRA, multimodal or prompt-embeds
    inputs."""
    from vllm import SamplingParams

    out = changed_fields(req.sampling_params, SamplingParams(), (*carried, *OUTPUT_ONLY_SAMPLING_FIELDS))
    n = parts.front.parallel_sampling_n(req.request_id) if parts.front is not None else 1
    if n != 1:
        out.append(f"sampling.n={n} (one of its parallel samples)")
    if getattr(req, "lora_request", None) is not None:
        out.append("LoRA adapter")
    if getattr(req, "mm_features", None):
        out.append("multimodal inputs")
    if getattr(req, "prompt_embeds", None) is not None:
        out.append("prompt embeddings")
    return out


def external_request_id(parts: EngineParts, internal_id: str) -> str:
    return parts.front.external_id(internal_id) if parts.front is not None else internal_id


def in_flight_requests(parts: EngineParts) -> list[Any]:
    """Requests the scheduler holds (running, then waiting)."""
    return [req for _, req in queued_requests(parts)]
