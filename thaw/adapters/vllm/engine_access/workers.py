"""The model's worker processes of a vLLM engine whose executor runs them outside the core."""

from __future__ import annotations

from typing import Any

from thaw.core import EngineUnsupported
from thaw.core.errors import reply_result


class RemoteWorkers:
    """The model's worker processes of an engine whose executor runs them outside the core
    (vLLM's multiprocess executor), reached through `collective_rpc` to thaw's
    `thaw_worker_call` (see `worker_ops`). Tensor parallel size 1: one worker."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def call(self, op: str, **args: Any) -> Any:
        try:
            replies = self.core.collective_rpc("thaw_worker_call", args=(op, args))
        except NotImplementedError as exc:
            raise EngineUnsupported(f"thaw's vLLM plugin is not active in the engine's worker process ({exc}); "
                                    "install thaw where vLLM runs and keep it in VLLM_PLUGINS if that is set") from None
        return reply_result(replies[0], "in the vLLM worker process")
