"""In-flight SGLang requests as a snapshot holds them: which settings travel, and which
make a request refuse to be captured (never resumed as a different request)."""

from __future__ import annotations

from typing import Any


from thaw.core import EngineUnsupported, RequestState

from ..request_fields import changed_fields
from . import capture
from .engine_access import committed_tokens, live_requests, request_slots, running_requests

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


def capture_requests(s: Any, page_of: dict[int, int], pool_pages: list[int]) -> list[RequestState]:
    """Live requests with the KV they hold (whole pages); pool pages not yet in the snapshot
    are appended to `pool_pages`."""
    p = s.page_size
    running = set(map(id, running_requests(s)))
    out = []
    for req in live_requests(s):
        computed = committed_tokens(req) // p * p
        slots = request_slots(s, req, computed)
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
            extra={"namespace": capture.encode_namespace(req.extra_key,
                                                             getattr(req, "cache_salt", None))}))
    return out
