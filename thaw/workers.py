"""Engines in separate processes, driven by one JSON message per line.

A *driver* is a class that builds an engine in its own process from a JSON config and
exposes operations as methods taking and returning JSON-able values (see
``thaw.adapters.vllm.driver`` for one). `EngineWorker` starts ``python -m thaw.workers``
with a driver and calls those methods; exceptions raised in the worker come back as
`RemoteError` carrying the remote exception's type name and message. The engine's own
logs go to a log file, so the reply channel carries nothing else.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import traceback
from typing import TYPE_CHECKING, Any, Optional

from .core.errors import ThawError

if TYPE_CHECKING:
    from .zygote import Zygote


class RemoteError(ThawError):
    """An operation failed inside a worker process; `type` names the remote exception."""

    def __init__(self, type_name: str, message: str, log_tail: str = "") -> None:
        super().__init__(f"{type_name}: {message}" + (f"\n--- worker log tail ---\n{log_tail}" if log_tail else ""))
        self.type = type_name
        self.remote_message = message


class EngineWorker:
    """One engine in a child process. Use as a context manager, or call `close()`."""

    def __init__(self, driver: str, config: dict[str, Any], *, env: Optional[dict[str, str]] = None,
                 start: bool = True, zygote: Optional["Zygote"] = None) -> None:
        """`zygote`: fork the worker from that pre-imported parent instead of starting
        ``python -m thaw.workers`` (see `thaw.zygote`); it behaves the same."""
        self.driver = driver
        self.log = tempfile.NamedTemporaryFile(prefix="thaw-worker-", suffix=".log", delete=False)
        if zygote is not None:
            self.proc: Any = zygote.spawn(driver, config, log_fd=self.log.fileno(), env=env,
                                          cwd=tempfile.gettempdir())
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "thaw.workers", driver, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                env={**os.environ, **(env or {})}, cwd=tempfile.gettempdir())
        self.ready: Any = None
        if start:
            self.wait_ready()

    def wait_ready(self) -> Any:
        if self.ready is None:
            self.ready = self._reply()
        return self.ready

    def _log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log.name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _reply(self) -> Any:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RemoteError("WorkerDied", f"worker exited with status {code}", self._log_tail())
        msg = json.loads(line)
        if not msg["ok"]:
            raise RemoteError(msg["type"], msg["message"])
        return msg["result"]

    def call(self, op: str, **args: Any) -> Any:
        self.wait_ready()
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self) -> "EngineWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _load_driver(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _serve(driver_spec: str, config_json: str) -> None:
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the engine prints goes to the log, not the reply channel

    def send(msg: dict[str, Any]) -> None:
        reply.write(json.dumps(msg) + "\n")
        reply.flush()

    def failure(exc: BaseException) -> dict[str, Any]:
        traceback.print_exc()
        return {"ok": False, "type": type(exc).__name__, "message": str(exc)}

    try:
        driver = _load_driver(driver_spec)(json.loads(config_json))
    except Exception as exc:  # reported to the parent, which raises RemoteError
        send(failure(exc))
        return
    send({"ok": True, "result": "ready"})
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            send({"ok": True, "result": getattr(driver, msg["op"])(**msg["args"])})
        except Exception as exc:  # reported to the parent, which raises RemoteError
            send(failure(exc))
    if hasattr(driver, "close"):  # engines with helper processes shut them down here
        driver.close()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
