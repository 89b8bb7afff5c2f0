"""In-flight SGLang requests as a snapshot holds them: which settings travel, and which
make a request refuse to be captured (never resumed as a different request)."""

from __future__ import annotations

from typing import Any

import torch

from thaw.core import EngineUnsupported, RequestState

from ..request_fields import changed_fields
from . import cache_state
from .engine_access import req_kv

SAMPLING_FIELDS = ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "min_p",
                   "frequency_penalty", "presence_penalty", "repetition_penalty", "sampling_seed",
                   "ignore_eos", "stop_token_ids")
# Never change generated tokens, or are set by SGLang's normalize() (stop strings are
# checked on their own).
UNCHECKED_SAMPLING_FIELDS = ("skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
                             "stream_interval", "stop_strs", "stop_regex_strs", "stop_str_max_len",
                             "stop_regex_max_len", "is_normalized", "ebnf_full_assistant")


def uncarried(req: Any) -> list[str]:
    """What a snapshot would lose of this request (see thaw.adapters.request_fields)."""
    from sglang.srt.sampling.sampling_params import SamplingParams

    sp = req.sampling_params
    lost = changed_fields(sp, SamplingParams(), (*SAMPLING_FIELDS, *UNCHECKED_SAMPLING_FIELDS))
    lost += [f"sampling.{name}" for name in ("stop_strs", "stop_regex_strs") if getattr(sp, name, None)]
    if getattr(req, "return_logprob", False):
        lost.append("return_logprob")
    if getattr(req, "lora_id", None):
        lost.append(f"LoRA adapter {req.lora_id!r}")
    return lost


def live_requests(s: Any) -> list[Any]:
    running = [r for r in s.running_batch.reqs if not r.finished()]
    return running + [r for r in s.waiting_queue if r not in running]


def capture_requests(s: Any, page_of: dict[int, int], pool_pages: list[int]) -> list[RequestState]:
    """Live requests with the KV they hold (whole pages); pool pages not yet in the snapshot
    are appended to `pool_pages`."""
    p = s.page_size
    running = set(map(id, s.running_batch.reqs))
    out = []
    for req in live_requests(s):
        kv = req_kv(req)
        computed = int(kv.kv_committed_len) // p * p if kv.req_pool_idx is not None else 0
        slots = s.req_to_token_pool.req_to_token[kv.req_pool_idx, :computed].to("cpu", torch.int64) \
            if computed else torch.empty(0, dtype=torch.int64)
        pages = []
        for pool_page in (slots[::p] // p).tolist():
            if pool_page not in page_of:
                page_of[pool_page] = len(pool_pages)
                pool_pages.append(pool_page)
            pages.append(page_of[pool_page])
        lost = uncarried(req)
        if lost:
            raise EngineUnsupported(f"in-flight request {req.rid!r} uses {', '.join(lost)}, which a snapshot "
                                    f"does not carry (it carries {', '.join(SAMPLING_FIELDS)}); finish or "
                                    "abort it before the snapshot")
        sp = req.sampling_params
        sampling = {f: getattr(sp, f) for f in SAMPLING_FIELDS}
        sampling["stop_token_ids"] = sorted(sampling["stop_token_ids"] or [])
        out.append(RequestState(
            request_id=req.rid, prompt_token_ids=list(req.origin_input_ids),
            output_token_ids=list(req.output_ids), sampling=sampling,
            num_computed_tokens=computed, pages=pages,
            status="running" if id(req) in running else "waiting",
            extra={"namespace": cache_state.encode_namespace(req.extra_key,
                                                             getattr(req, "cache_salt", None))}))
    return out
