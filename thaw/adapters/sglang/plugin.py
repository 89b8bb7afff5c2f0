"""SGLang plugin (entry point `sglang.srt.plugins` -> `thaw`).

SGLang calls `register()` early in each of its processes. It adds one method,
`Scheduler.thaw_call`, which `Engine.collective_rpc("thaw_call", ...)` runs between batches
on the scheduler's own thread, and wraps `UnifiedRadixCache.insert` to record the token id
of every slot it inserts (see `slot_walk`; inserts behave as before). Nothing else in
SGLang is changed.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any


def thaw_call(self: Any, op: str, args_json: str, reply_path: str) -> None:
    """Runs `scheduler_ops.<op>(scheduler, **args)`; writes {"ok", "result"} or {"ok": False,
    "type", "message"} to `reply_path` (collective_rpc returns no value). Never raises, so
    SGLang's RPC reports success and the caller reads the typed outcome from the file."""
    from . import scheduler_ops

    try:
        fn = scheduler_ops.OPS[op]
        reply = {"ok": True, "result": fn(self, **json.loads(args_json))}
    except Exception as exc:  # reported to the caller, with its type, through the reply file
        reply = {"ok": False, "type": type(exc).__name__, "message": str(exc),
                 "traceback": traceback.format_exc(limit=20)}
    tmp = reply_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(reply, f)
    os.replace(tmp, reply_path)


def register() -> None:
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    from .slot_walk import install_insert_recorder

    Scheduler.thaw_call = thaw_call
    # SGLang's default (Rust) tree core keeps token ids out of Python's reach; record them
    # as they are inserted, from before the scheduler builds its cache.
    install_insert_recorder(UnifiedRadixCache)
