"""Engines in separate processes, driven by one JSON message per line.

A *driver* is a class that builds an engine in its own process from a JSON config and
exposes operations as methods taking and returning JSON-able values (see
``thaw.adapters.vllm.driver`` for one). `EngineWorker` starts ``python -m thaw.workers``
(as `thaw.child_process` starts every child: nothing writable by others on its import
path) with a driver, sends the config as the first line on its stdin (not on the command
line, which other local users can read in ``/proc``) and calls those methods; exceptions
raised in the worker come back as `RemoteError` carrying the remote exception's type name
and message (one of thaw's own errors as that class too: `thaw.core.errors.remote_error`). A worker that dies, or answers with anything but a whole reply line, is
`WorkerLost`. The engine's own logs go to a log file, so the reply channel carries
nothing else. Path arguments (`thaw.child_process.PATH_ARGS`) are made absolute before they
are sent: the worker runs in ``/``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import traceback
from typing import Any, Optional, Protocol

from .child_process import CHILD_CWD, child_env, python_command, with_absolute_paths
from .core.errors import RemoteError, error_reply, remote_error


class Spawner(Protocol):
    """Starts a worker process for a driver (`thaw.zygote.Zygote` forks one pre-imported)."""

    def spawn(self, driver: str, config: dict[str, Any], *, log_fd: int,
              env: Optional[dict[str, str]] = None) -> Any: ...


__all__ = ["EngineWorker", "RemoteError", "WorkerLost"]


class WorkerLost(RemoteError):
    """The worker process died, or its reply channel broke (a malformed or partial line):
    its engine is gone, and the call's work must be re-run elsewhere."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__("WorkerDied", message,
                         f"WorkerDied: {message}" + (f"\n--- worker log tail ---\n{log_tail}" if log_tail else ""))


class EngineWorker:
    """One engine in a child process. Use as a context manager, or call `close()`."""

    def __init__(self, driver: str, config: dict[str, Any], *, env: Optional[dict[str, str]] = None,
                 start: bool = True, zygote: Optional[Spawner] = None) -> None:
        """`zygote`: fork the worker from that pre-imported parent instead of starting
        ``python -m thaw.workers`` (see `thaw.zygote`); it behaves the same."""
        self.driver = driver
        self.log = tempfile.NamedTemporaryFile(prefix="thaw-worker-", suffix=".log", delete=False)
        if zygote is not None:
            self.proc: Any = zygote.spawn(driver, config, log_fd=self.log.fileno(), env=env)
        else:
            self.proc = subprocess.Popen(python_command("thaw.workers", driver), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.log, text=True,
                                         env=child_env(env), cwd=CHILD_CWD)
            try:
                self.proc.stdin.write(json.dumps(config) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:  # died at start: `wait_ready` reports it with the log
                pass
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

    def _name(self) -> str:
        return f"worker {self.proc.pid} ({self.driver})"

    def _reply(self) -> Any:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerLost(f"{self._name()} exited with status {code}", self._log_tail())
        try:
            msg = json.loads(line)
            ok = msg["ok"]
            if not isinstance(ok, bool):
                raise ValueError(f"'ok' is {ok!r}")
        except (ValueError, KeyError, TypeError) as exc:  # a partial or foreign line: the channel is broken
            self.proc.kill()
            raise WorkerLost(f"{self._name()} broke its reply channel ({type(exc).__name__}: {exc}; line "
                             f"{line[:200]!r}); it was stopped", self._log_tail()) from None
        if not ok:
            raise remote_error(str(msg.get("type")), str(msg.get("message")))
        return msg.get("result")

    def call(self, op: str, **args: Any) -> Any:
        self.wait_ready()
        self.proc.stdin.write(json.dumps({"op": op, "args": with_absolute_paths(args)}) + "\n")
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


def _serve(driver_spec: str, config_json: Optional[str] = None) -> None:
    """Serves `driver_spec` with its config (`config_json`, else the first line on stdin)."""
    if config_json is None:
        config_json = sys.stdin.readline()
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the engine prints goes to the log, not the reply channel

    def send(msg: dict[str, Any]) -> None:
        reply.write(json.dumps(msg) + "\n")
        reply.flush()

    def failure(exc: BaseException) -> dict[str, Any]:
        traceback.print_exc()  # into the worker's log
        reply = error_reply(exc)
        reply.pop("traceback", None)
        return reply

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
    _serve(sys.argv[1])
