"""The model's worker processes of a vLLM engine whose executor runs them outside the core."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from thaw.core import EngineUnsupported
from thaw.core.errors import reply_result


RECHECK_MS = 1  # ms between the core's looks at the reply queues during a thaw call (1 ms was
# faster than 2 ms for a 64 MB KV restore in a trial run on 2 cores)


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
            with self._quiet_wait():
                replies = self.core.collective_rpc("thaw_worker_call", args=(op, args))
        except NotImplementedError as exc:
            raise EngineUnsupported(f"thaw's vLLM plugin is not active in the engine's worker process ({exc}); "
                                    "install thaw where vLLM runs and keep it in VLLM_PLUGINS if that is set") from None
        where = "in the vLLM worker process" + (" of rank {}" if len(replies) > 1 else "")
        return [reply_result(reply, where.format(rank)) for rank, reply in enumerate(replies)]

    def call(self, op: str, **args: Any) -> Any:
        """Rank 0's result of `op` run on every worker (see `call_each`)."""
        return self.call_each(op, **args)[0]

    @contextlib.contextmanager
    def _quiet_wait(self) -> Iterator[None]:
        """While a thaw call runs in the workers, the core waits for their replies mostly asleep.

        vLLM's shared-memory reply queues let their reader spin on `sched_yield` for a second
        after each read (`SpinCondition.busy_loop_s`): right for model steps of milliseconds,
        but for a thaw call of tens of milliseconds to seconds it takes a CPU core from the
        workers (seen in trial runs on 2 cores: KV restores ran much slower). Their idle path, a
        socket poll the writer wakes, can miss its wake-up and then sleeps the whole recheck
        interval (`SHM_READER_RECHECK_INTERVAL_MS`, 5 s; seen on a weights restore). So for
        the call the reader sleeps in polls of `RECHECK_MS` and looks at the queue between
        them; both settings are put back after the call. Executors without these queues, and
        vLLM releases whose idle wait has no recheck interval to shorten (0.26 waits up to its
        60 s warning interval), are left spinning as they are."""
        from vllm.distributed.device_communicators import shm_broadcast

        executor = getattr(self.core, "model_executor", None)
        queues = getattr(executor, "response_mqs", None) or []
        conditions = [c for c in (getattr(q, "_spin_condition", None) for q in queues) if c is not None]
        if not conditions or not hasattr(shm_broadcast, "SHM_READER_RECHECK_INTERVAL_MS"):
            yield
            return
        saved = [c.busy_loop_s for c in conditions], shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS
        for condition in conditions:
            condition.busy_loop_s = 0
        shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS = RECHECK_MS
        try:
            yield
        finally:
            for condition, seconds in zip(conditions, saved[0]):
                condition.busy_loop_s = seconds
            shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS = saved[1]
