"""thaw's side of vLLM's EngineCore: the `thaw_call` utility method.

thaw's vLLM plugin adds `thaw_call` to vLLM's `EngineCore` class in the process that runs
the core. Clients reach it with vLLM's own utility calls (`call_utility` of a
multiprocess `LLM`'s client, `call_utility_async` of an `AsyncLLM`'s), which vLLM serves
on the core's thread between scheduler steps: the block pool, prefix hashes and queues
are quiescent, and KV tensors and weights (the worker runs in the core at tensor parallel
size 1) move between the engine's memory and the snapshot file in this process.

Contract: `thaw_call(op, args)` takes and returns plain JSON-able values. It never raises
for thaw's own errors: a `ThawError` comes back as ``{"ok": False, "type", "message"}`` so
that the client can raise the same type; anything else is vLLM's to report. A request from
thaw's server endpoints carries ``confine_to``: every file the operation opens must lie in
that directory (`thaw.core.confine`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from thaw.core import ThawError
from thaw.core.confine import confined_to
from thaw.core.errors import error_reply

OPS = ("identity", "snapshot", "restore", "prepare", "release_prepared", "status")


def _handle(core: Any, prefault_kv: bool) -> Any:
    from . import engine_access
    from .engine_access import thaw_state
    from .handle import VLLMHandle

    return thaw_state.kept(core, thaw_state.HANDLE,
                           lambda: VLLMHandle(engine_access.reach_core(core), prefault_kv=prefault_kv))


def _timed(fn: Callable[[], Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    report = fn()
    out = report.to_json() if hasattr(report, "to_json") else {"value": report}
    if isinstance(out.get("seconds"), dict):
        out["seconds_by_phase"] = out.pop("seconds")
    out["seconds"] = time.perf_counter() - t0
    return out


def thaw_call(core: Any, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs one thaw operation on this engine core (see the module docstring)."""
    try:
        if op not in OPS:
            raise ThawError(f"unknown thaw operation {op!r}; known: {list(OPS)}")
        args = dict(args or {})
        handle = _handle(core, bool(args.pop("prefault_kv", True)))
        with confined_to(args.pop("confine_to", None)):  # a server's request: its directory only
            result = _run(handle, op, args)
        return {"ok": True, "result": result}
    except (ThawError, OSError, TypeError, KeyError) as exc:  # thaw's, a missing file, a bad argument
        return error_reply(exc)


def _run(handle: Any, op: str, args: dict[str, Any]) -> Any:
    if op == "identity":
        return handle.identity().to_json()
    if op == "status":
        return handle.status()
    if op == "snapshot":
        return _timed(lambda: handle.snapshot(args.pop("path"), **args))
    if op == "restore":
        return _timed(lambda: handle.restore(args.pop("path"), **args))
    if op == "prepare":
        return {"seconds": handle.prepare(args.pop("path"), **args)}
    handle.release_prepared()
    return {}


def install() -> None:
    """Adds `thaw_call` to vLLM's EngineCore class (idempotent)."""
    from .engine_access import add_engine_core_method

    add_engine_core_method("thaw_call", thaw_call)
