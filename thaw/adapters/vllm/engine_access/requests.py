"""vLLM requests as thaw sees them: the client's request front (in-process engines only),
in-flight requests in the scheduler, and which of their settings a snapshot carries."""

from __future__ import annotations

from typing import Any


class RequestFront:
    """The client half of an in-process engine: request ids as the caller knows them,
    queueing and aborting requests whose outputs reach the caller."""

    def __init__(self, llm: Any) -> None:
        self.engine = llm.llm_engine

    def _states(self) -> dict[str, Any]:
        return self.engine.output_processor.request_states

    def external_id(self, internal_id: str) -> str:
        state = self._states().get(internal_id)
        return getattr(state, "external_req_id", None) or internal_id

    def parallel_sampling_n(self, internal_id: str) -> int:
        """n of the request this one is a child of (vLLM fans n > 1 out into children), else 1."""
        parent = getattr(self._states().get(internal_id), "parent_req", None)
        return int(parent.n) if parent is not None else 1

    def live_ids(self) -> set[str]:
        states = self._states()
        return set(states) | {s.external_req_id for s in states.values()}

    def add_request(self, request_id: str, prompt: dict[str, Any], params: Any) -> None:
        self.engine.add_request(request_id, prompt, params)

    def abort(self, request_ids: list[str]) -> None:
        self.engine.abort_request(request_ids)




NO_FRONT = ("in-flight requests are carried only by an in-process vLLM engine "
            "(VLLM_ENABLE_V1_MULTIPROCESSING=0), where thaw also sees the caller's request ids; "
            "this engine runs its core in another process")




# SamplingParams fields that change only how output is reported, never which tokens are
# generated or when a request stops: a resumed request may drop them.
OUTPUT_ONLY_SAMPLING_FIELDS = frozenset({
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    "output_kind", "stream_interval", "skip_clone", "output_text_buffer_length", "flat_logprobs"})


def request_rejections() -> tuple[type[BaseException], ...]:
    """What building a request vLLM does not accept raises: ValueError and friends, and on
    releases that have it (0.32; not 0.26) vLLM's own client-error class."""
    import importlib.util

    out: tuple[type[BaseException], ...] = (KeyError, TypeError, ValueError)
    if importlib.util.find_spec("vllm.exceptions") is not None:
        from vllm.exceptions import VLLMClientError

        out += (VLLMClientError,)
    return out
