"""SGLang plugin (entry point `sglang.srt.plugins` -> `thaw`).

SGLang calls `register()` early in each of its processes. In every process it adds one
method, `Scheduler.thaw_call`, which an RPC to the scheduler (`Engine.collective_rpc`, or
the server's own socket, see `server`) runs between batches on the scheduler's own thread,
and wraps `UnifiedRadixCache.insert` to record the token id of every slot it inserts (see
`slot_walk`; inserts behave as before). In the main process of an HTTP server
(`python -m sglang.launch_server`, `sglang serve`) it also adds thaw's endpoints (see
`server`). Nothing else in SGLang is changed.
"""

from __future__ import annotations

import json
from typing import Any


def thaw_call(self: Any, op: str, args_json: str, reply_path: str) -> None:
    """Runs `scheduler_ops.<op>(scheduler, **args)`; writes {"ok", "result"} or {"ok": False,
    "type", "message"} (with the traceback of anything not thaw's) to `reply_path` (SGLang's
    RPC returns no value). A request from thaw's server endpoints carries ``confine_to``: every
    file the operation opens must lie in that directory (`thaw.core.confine`). Never raises,
    so SGLang's RPC reports success and the caller reads the typed outcome from the file."""
    from thaw.core.confine import confined_to
    from thaw.core.errors import error_reply

    from . import scheduler_ops
    from .rpc import write_reply

    try:
        if op not in scheduler_ops.OPS:
            raise KeyError(f"unknown thaw operation {op!r}; known: {sorted(scheduler_ops.OPS)}")
        args = json.loads(args_json)
        with confined_to(args.pop("confine_to", None)):  # a server's request: its directory only
            reply = {"ok": True, "result": scheduler_ops.OPS[op](self, **args)}
    except Exception as exc:  # reported to the caller, with its type, through the reply file
        reply = error_reply(exc)
    write_reply(reply_path, reply)


def register() -> None:
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    from . import engine_access
    from .slot_walk import install_insert_recorder

    Scheduler.thaw_call = thaw_call
    # SGLang's default (Rust) tree core keeps token ids out of Python's reach; record them
    # as they are inserted, from before the scheduler builds its cache.
    install_insert_recorder(UnifiedRadixCache)
    if engine_access.starting_http_server():
        from .server import install_routes

        engine_access.before_http_server_runs(install_routes)
