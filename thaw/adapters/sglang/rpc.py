"""Calls of `plugin.thaw_call` in SGLang's scheduler process, with their typed replies.

SGLang's RPC (an `RpcReqInput` naming a scheduler method, which `Engine.collective_rpc`
sends and the scheduler runs between batches) answers only success and a message, so
`thaw_call` writes its JSON reply (``{"ok", "result"}`` or ``{"ok": False, "type",
"message"}``) to a file the caller names and reads back.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

PLUGIN_HINT = ("thaw's SGLang plugin is not active in the engine's scheduler: install thaw in "
               "the environment that runs SGLang (it registers entry point group "
               "'sglang.srt.plugins', name 'thaw') and, if SGLANG_PLUGINS is set, include 'thaw'")


class RPCFailed(Exception):
    """SGLang reported the RPC itself as failed (`message` is its text)."""

    @property
    def plugin_missing(self) -> bool:
        return "thaw_call" in str(self)


Send = Callable[[dict[str, Any]], None]  # delivers thaw_call(**params); raises RPCFailed


def call_thaw(send: Send, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """The scheduler's reply to `scheduler_ops.<op>(**args)`, sent with `send`."""
    fd, reply_path = tempfile.mkstemp(prefix="thaw-sglang-", suffix=".json")
    os.close(fd)
    os.unlink(reply_path)  # thaw_call creates it atomically once the reply is complete
    try:
        send({"op": op, "args_json": json.dumps(args), "reply_path": reply_path})
        with open(reply_path) as f:
            return json.load(f)
    finally:
        if os.path.exists(reply_path):
            os.unlink(reply_path)
