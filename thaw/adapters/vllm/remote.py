"""Handles for vLLM engines whose core runs in another process: a multiprocess `LLM`
(vLLM's default) and an `AsyncLLM` (what `vllm serve` runs).

Each call is one vLLM utility call to `thaw_call` in the EngineCore process (see
`core_service`), served between scheduler steps; reports come back as JSON-able dicts, and
a `ThawError` raised there is raised here with the same type and message. In-flight
requests stay where they are: a snapshot with requests in flight, or a restore of a
snapshot holding requests, is refused unless `requests=False` (the caller's request ids
and outputs live in the client, not in the core).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from thaw.core import Identity
from thaw.core.object_store import absolute
from thaw.core.errors import reply_result

PathLike = Union[str, os.PathLike]


CORE = "in the vLLM engine core process"  # where errors of `thaw_call` were raised


def _args(path: Optional[PathLike], prefault_kv: bool, **kwargs: Any) -> dict[str, Any]:
    out = dict(kwargs)
    if path is not None:
        out["path"] = absolute(path)  # the core may run in another directory
    out["prefault_kv"] = prefault_kv
    return out


def _absolute(path: Optional[PathLike]) -> Optional[str]:
    return None if path is None else absolute(path)


class RemoteVLLMHandle:
    """A multiprocess `vllm.LLM`'s core, reached by utility calls. Same methods as
    `VLLMHandle` for snapshot, restore, prepare and identity; reports are dicts."""

    def __init__(self, client: Any, *, prefault_kv: bool = True) -> None:
        self.client = client
        self.prefault_kv = prefault_kv
        self.status()  # binds thaw in the core now (and backs its KV buffer), or says why not

    def _call(self, op: str, path: Optional[PathLike] = None, **kwargs: Any) -> Any:
        return reply_result(self.client.call_utility("thaw_call", op, _args(path, self.prefault_kv, **kwargs)), CORE)

    def identity(self) -> Identity:
        return Identity.from_json(self._call("identity"))

    def status(self) -> dict[str, Any]:
        return self._call("status")

    def snapshot(self, path: PathLike, *, weights: bool = True, weights_format: Optional[str] = None,
                 strict: bool = False, requests: bool = True,
                 weights_from: Optional[PathLike] = None, direct: bool = False,
                 recycle: Optional[PathLike] = None) -> dict[str, Any]:
        return self._call("snapshot", path, weights=weights, weights_format=weights_format,
                          strict=strict, requests=requests, weights_from=_absolute(weights_from), direct=direct,
                          recycle=_absolute(recycle))

    def restore(self, path: PathLike, *, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> dict[str, Any]:
        return self._call("restore", path, weights=weights, requests=requests,
                          trust_unknown_weights=trust_unknown_weights)

    def prepare(self, path: PathLike, *, kv_on_device: bool = False) -> float:
        return self._call("prepare", path, kv_on_device=kv_on_device)["seconds"]

    def release_prepared(self) -> None:
        self._call("release_prepared")


class AsyncVLLMHandle:
    """An `AsyncLLM`'s core, reached by async utility calls: every method is awaitable.
    Create it with `attach(async_llm)`, then `await handle.bind()` (or any call) once."""

    def __init__(self, client: Any, *, prefault_kv: bool = True) -> None:
        self.client = client
        self.prefault_kv = prefault_kv

    async def _call(self, op: str, path: Optional[PathLike] = None, **kwargs: Any) -> Any:
        reply = await self.client.call_utility_async("thaw_call", op, _args(path, self.prefault_kv, **kwargs))
        return reply_result(reply, CORE)

    async def bind(self) -> dict[str, Any]:
        """Binds thaw in the core (backs its KV buffer); returns `status()`."""
        return await self.status()

    async def identity(self) -> Identity:
        return Identity.from_json(await self._call("identity"))

    async def status(self) -> dict[str, Any]:
        return await self._call("status")

    async def snapshot(self, path: PathLike, *, weights: bool = True, weights_format: Optional[str] = None,
                       strict: bool = False, requests: bool = True,
                       weights_from: Optional[PathLike] = None, direct: bool = False,
                       recycle: Optional[PathLike] = None) -> dict[str, Any]:
        return await self._call("snapshot", path, weights=weights, weights_format=weights_format,
                                strict=strict, requests=requests, weights_from=_absolute(weights_from),
                                direct=direct, recycle=_absolute(recycle))

    async def restore(self, path: PathLike, *, weights: bool = True, requests: bool = True,
                      trust_unknown_weights: bool = False) -> dict[str, Any]:
        return await self._call("restore", path, weights=weights, requests=requests,
                                trust_unknown_weights=trust_unknown_weights)

    async def prepare(self, path: PathLike, *, kv_on_device: bool = False) -> float:
        return (await self._call("prepare", path, kv_on_device=kv_on_device))["seconds"]

    async def release_prepared(self) -> None:
        await self._call("release_prepared")
