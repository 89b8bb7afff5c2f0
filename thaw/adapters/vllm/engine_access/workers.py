"""The model's worker processes of a vLLM engine whose executor runs them outside the core."""

from __future__ import annotations

from typing import Any

from thaw.core import EngineUnsupported
from thaw.core.errors import reply_result


class RemoteWorkers:
    """The model's worker processes of an engine whose executor runs them outside the core
    (vLLM's multiprocess executor), reached through `collective_rpc` to thaw's
    `thaw_worker_call` (see `worker_ops`): one worker per tensor-parallel rank, every call
    made on all of them at once."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def call_each(self, op: str, **args: Any) -> list[Any]:
        """Every worker's result, in rank order; the first error reply (by rank) is raised."""
        try:
            replies = self.core.collective_rpc("thaw_worker_call", args=(op, args))
        except NotImplementedError as exc:
            raise EngineUnsupported(f"thaw's vLLM plugin is not active in the engine's worker process ({exc}); "
                                    "install thaw where vLLM runs and keep it in VLLM_PLUGINS if that is set") from None
        where = "in the vLLM worker process" + (" of rank {}" if len(replies) > 1 else "")
        return [reply_result(reply, where.format(rank)) for rank, reply in enumerate(replies)]

    def call(self, op: str, **args: Any) -> Any:
        """Rank 0's result of `op` run on every worker (see `call_each`)."""
        return self.call_each(op, **args)[0]
