"""Calls of `plugin.thaw_call` in SGLang's scheduler process, with their typed replies.

SGLang's RPC (an `RpcReqInput` naming a scheduler method, which `Engine.collective_rpc`
sends and the scheduler runs between batches) answers only success and a message, so
`thaw_call` writes its JSON reply (``{"ok", "result"}`` or ``{"ok": False, "type",
"message"}``) to a file the caller names and reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable

from thaw.core.errors import ThawError

PLUGIN_HINT = ("thaw's SGLang plugin is not active in the engine's scheduler: install thaw in "
               "the environment that runs SGLang (it registers entry point group "
               "'sglang.srt.plugins', name 'thaw') and, if SGLANG_PLUGINS is set, include 'thaw'")


class RPCFailed(Exception):
    """SGLang reported the RPC itself as failed (`message` is its text)."""

    @property
    def plugin_missing(self) -> bool:
        return "thaw_call" in str(self)


Send = Callable[[dict[str, Any]], None]  # delivers thaw_call(**params); raises RPCFailed


class SchedulerBusy(ThawError):
    """The scheduler still holds requests that have already answered (SGLang retires a batch
    on its next loop after the reply went out); an operation that needs it idle is asked
    again (`call_thaw`) until `BUSY_WAIT` seconds have passed."""


BUSY_WAIT = 30.0  # seconds an operation waits for the scheduler to retire answered requests


def call_thaw(send: Send, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """The scheduler's reply to `scheduler_ops.<op>(**args)`, sent with `send`; asked again,
    bounded by `BUSY_WAIT`, while the scheduler answers `SchedulerBusy`."""
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        reply = _call_once(send, op, args)
        if reply.get("type") != SchedulerBusy.__name__ or time.monotonic() > deadline:
            return reply
        time.sleep(0.02)


def _call_once(send: Send, op: str, args: dict[str, Any]) -> dict[str, Any]:
    private = tempfile.mkdtemp(prefix="thaw-sglang-rpc-")  # 0700, ours alone
    reply_path = os.path.join(private, "reply.json")  # thaw_call creates it once the reply is complete
    try:
        send({"op": op, "args_json": json.dumps(args), "reply_path": reply_path})
        with open(reply_path) as f:
            return json.load(f)
    finally:
        shutil.rmtree(private)


def write_reply(reply_path: str, reply: dict[str, Any]) -> None:
    """Writes `reply` to `reply_path` whole or not at all: a new file (0600, never through a
    link or over an existing file) under a temporary name beside it, then renamed."""
    tmp = reply_path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(reply, f)
    os.replace(tmp, reply_path)
