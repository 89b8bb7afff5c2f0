"""Handles for vLLM engines whose core runs in another process: a multiprocess `LLM`
(vLLM's default) and an `AsyncLLM` (what `vllm serve` runs).

`RemoteVLLMHandle` is an `EngineAdapter`: each call is one vLLM utility call to
`thaw_call` in the EngineCore process (see `core_ops`), served between scheduler steps;
reports come back as JSON-able dicts, and a `ThawError` raised there is raised here with
the same type and message. `capture` and the restore of an in-memory snapshot cross as a
private snapshot file (`thaw.core.across_processes`). `AsyncVLLMHandle` is the same handle
with an asynchronous transport: every method returns an awaitable. In-flight requests
stay where they are: a snapshot with requests in flight, or a restore of a snapshot
holding requests, is refused unless `requests=False` (the caller's request ids and outputs
live in the client, not in the core).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Optional, Union

from thaw.core import Identity, StateSnapshot
from thaw.core.across_processes import capture_through_file, restore_through_file
from thaw.core.adapter import EngineAdapter
from thaw.core.errors import reply_result
from thaw.core.object_store import absolute

PathLike = Union[str, os.PathLike]
SnapshotSource = Union[PathLike, StateSnapshot]

CORE = "in the vLLM engine core process"  # where errors of `thaw_call` were raised


def _absolute(path: Optional[PathLike]) -> Optional[str]:
    return None if path is None else absolute(path)  # the core may run in another directory


class RemoteVLLMHandle(EngineAdapter):
    """A multiprocess `vllm.LLM`'s core, reached by utility calls: the `VLLMHandle` methods
    for identity, status, capture, snapshot, restore and prepare, with dict reports."""

    def __init__(self, client: Any, *, prefault_kv: bool = True) -> None:
        self.client = client
        self.prefault_kv = prefault_kv
        self.bind()

    def _call(self, op: str, decode: Callable[[Any], Any] = lambda result: result, **args: Any) -> Any:
        """Runs `op` in the core and returns `decode` of its result (the transport)."""
        reply = self.client.call_utility("thaw_call", op, {**args, "prefault_kv": self.prefault_kv})
        return decode(reply_result(reply, CORE))

    def bind(self) -> Any:
        """Binds thaw in the core (backs its KV buffer), or says why not; returns `status()`."""
        return self.status()

    def identity(self) -> Identity:
        return self._call("identity", Identity.from_json)

    def status(self) -> dict[str, Any]:
        return self._call("status")

    def capture(self, *, weights: bool = True, weights_format: Optional[str] = None,
                strict: bool = False, requests: bool = True) -> StateSnapshot:
        """The engine's state, as `snapshot` writes it (refused with requests in flight unless
        `requests=False`: they live in the client)."""
        return capture_through_file(lambda path: self._finished(self.snapshot(
            path, weights=weights, weights_format=weights_format, strict=strict, requests=requests)))

    def snapshot(self, path: PathLike, *, weights: bool = True, weights_format: Optional[str] = None,
                 strict: bool = False, requests: bool = True, weights_from: Optional[PathLike] = None,
                 direct: bool = False, recycle: Optional[PathLike] = None) -> dict[str, Any]:
        return self._call("snapshot", path=absolute(path), weights=weights, weights_format=weights_format,
                          strict=strict, requests=requests, weights_from=_absolute(weights_from), direct=direct,
                          recycle=_absolute(recycle))

    def restore(self, snapshot: SnapshotSource, *, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> dict[str, Any]:
        """Hydrates the engine from a snapshot file, or an in-memory `StateSnapshot`."""
        def from_file(path: PathLike) -> Any:
            return self._call("restore", path=absolute(path), weights=weights, requests=requests,
                              trust_unknown_weights=trust_unknown_weights)

        if isinstance(snapshot, StateSnapshot):
            return restore_through_file(snapshot, lambda path: self._finished(from_file(path)))
        return from_file(snapshot)

    def prepare(self, path: PathLike, *, kv_on_device: bool = False) -> float:
        return self._call("prepare", lambda result: result["seconds"], path=absolute(path),
                          kv_on_device=kv_on_device)

    def release_prepared(self) -> None:
        return self._call("release_prepared", lambda result: None)

    def _finished(self, result: Any) -> Any:
        """`result` of a call whose file must be used before it returns (sync: the value)."""
        return result


class AsyncVLLMHandle(RemoteVLLMHandle):
    """An `AsyncLLM`'s core: the same handle over vLLM's async utility calls, so every
    method returns an awaitable. Create it with `attach(async_llm)`, then `await
    handle.bind()` (or any call) once."""

    def __init__(self, client: Any, *, prefault_kv: bool = True) -> None:
        self.client = client
        self.prefault_kv = prefault_kv

    async def _call(self, op: str, decode: Callable[[Any], Any] = lambda result: result,  # type: ignore[override]
                    **args: Any) -> Any:
        reply = await self.client.call_utility_async("thaw_call", op, {**args, "prefault_kv": self.prefault_kv})
        return decode(reply_result(reply, CORE))

    async def capture(self, **kwargs: Any) -> StateSnapshot:  # type: ignore[override]
        """The engine's state, as `RemoteVLLMHandle.capture` (the file is loaded and checked
        off the event loop)."""
        return await self._off_loop(lambda: RemoteVLLMHandle.capture(self, **kwargs))

    async def restore(self, snapshot: SnapshotSource, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(snapshot, StateSnapshot):  # saved off the event loop
            return await self._off_loop(lambda: RemoteVLLMHandle.restore(self, snapshot, **kwargs))
        return await RemoteVLLMHandle.restore(self, snapshot, **kwargs)

    async def _off_loop(self, fn: Callable[[], Any]) -> Any:
        self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(None, fn)

    def _finished(self, result: Any) -> Any:
        """A call made from `_off_loop`'s thread, run on the event loop and waited for."""
        return asyncio.run_coroutine_threadsafe(result, self._loop).result()
