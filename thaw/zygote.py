"""A pre-imported parent process that forks engine workers, so a new worker skips the imports.

`Zygote(preload)` starts ``python -m thaw.zygote``, which imports the `preload` modules (e.g.
``vllm`` and its driver: tens of seconds on a GPU box) once and then waits. Each `spawn`
forks it: the child takes the pipes and log file handed over the control socket as its
stdin, stdout and stderr and runs the worker protocol of `thaw.workers` with the driver and
config given, so an `EngineWorker(..., zygote=z)` behaves as one started by `python -m
thaw.workers`, only without the import. The fork happens before anything initialises CUDA:
the preloaded modules must not touch a device at import (vLLM's and SGLang's do not), and
each child initialises its own. vLLM's import leaves helper threads running, so Python warns
at each fork (`DeprecationWarning`); a child uses none of them, and the vLLM workers of the
tests and of `benchmarks/gpu_warm_pool.py` boot and serve forked this way.

A child is not this process's child: `ForkedProcess` gives it the `subprocess.Popen` face
the worker needs (`pid`, `stdin`, `stdout`, `poll`, `wait`, `kill`), its exit status read
from the zygote, which reaps it. The zygote is started as `thaw.child_process` starts every
child (no writable directory on its import path, in ``/``), and its children inherit that.
Closing the zygote stops only the zygote; workers already forked keep running until their
own `close`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from .child_process import CHILD_CWD, child_env, python_command
from .core.errors import ZygoteError, error_reply, reply_result


class ForkedProcess:
    """A worker forked by a `Zygote`, with the part of `subprocess.Popen` workers use."""

    def __init__(self, zygote: "Zygote", pid: int, stdin: Any, stdout: Any) -> None:
        self.zygote, self.pid, self.stdin, self.stdout = zygote, pid, stdin, stdout
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self.zygote._status(self.pid)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


class Zygote:
    """One pre-imported parent (see the module docstring); thread-safe; `close()` stops it."""

    def __init__(self, preload: list[str], *, env: Optional[dict[str, str]] = None) -> None:
        self.preload = list(preload)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(python_command("thaw.zygote", str(theirs.fileno()), json.dumps(preload)),
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                     env=child_env(env), cwd=CHILD_CWD)
        theirs.close()
        self._sock, self._lock, self._closed = ours, threading.Lock(), False
        self._replies = ours.makefile("r")
        ready = self._reply()
        self.import_seconds: float = ready["import_seconds"]

    def _reply(self) -> dict[str, Any]:
        line = self._replies.readline()
        if not line:
            code = self.proc.wait()
            raise ZygoteError(f"the zygote (preloading {self.preload}) exited with status {code}")
        return reply_result(json.loads(line), "in the zygote")

    def _ask(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        with self._lock:
            socket.send_fds(self._sock, [json.dumps(msg).encode() + b"\n"], list(fds))
            return self._reply()

    def spawn(self, driver: str, config: dict[str, Any], *, log_fd: int,
              env: Optional[dict[str, str]] = None, cwd: Optional[str] = None) -> ForkedProcess:
        """Forks a worker running `driver` with `config`; its stderr goes to `log_fd`."""
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        try:
            pid = self._ask({"op": "spawn", "driver": driver, "config": config, "env": env or {}, "cwd": cwd},
                            (child_in, child_out, log_fd))["pid"]
        except BaseException:
            os.close(to_child)
            os.close(from_child)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        return ForkedProcess(self, pid, os.fdopen(to_child, "w"), os.fdopen(from_child, "r"))

    def _status(self, pid: int) -> Optional[int]:
        """The exit status the zygote reaped, None while `pid` runs. After `close` the
        orphaned worker is reaped by init: only whether it still runs is known (-1 once gone)."""
        if self._closed:
            try:
                os.kill(pid, 0)
                return None
            except ProcessLookupError:
                return -1
        return self._ask({"op": "status", "pid": pid})["status"]

    def close(self) -> None:
        self._closed = True
        self._replies.close()  # the socket's fd stays open while a file made from it is
        self._sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _child(msg: dict[str, Any], fds: list[int], control: socket.socket) -> None:
    """In the forked child: take the handed-over fds as stdin/stdout/stderr, serve, exit."""
    control.close()
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.update(msg["env"])
    if msg["cwd"]:
        os.chdir(msg["cwd"])
    from .workers import _serve

    code = 0
    try:
        _serve(msg["driver"], json.dumps(msg["config"]))
    except BaseException:  # the worker's own failures are replies; this is the protocol itself failing
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _status_of(pid: int, exited: dict[int, int]) -> Optional[int]:
    if pid in exited:
        return exited[pid]
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1  # not a child of this zygote (or already reaped): report it gone
    if done == 0:
        return None
    exited[pid] = os.waitstatus_to_exitcode(status)
    return exited[pid]


def _main(control_fd: int, preload: list[str]) -> None:
    import importlib

    control = socket.socket(fileno=control_fd)

    def send(msg: dict[str, Any]) -> None:
        control.sendall(json.dumps(msg).encode() + b"\n")

    t0 = time.perf_counter()
    try:
        for name in preload:
            importlib.import_module(name)
    except Exception as exc:  # reported to the parent, which raises ZygoteError
        send(error_reply(ZygoteError(f"preloading {name!r} failed: {type(exc).__name__}: {exc}")))
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        send(error_reply(ZygoteError(f"preloading {preload} initialised CUDA: a forked child could not use it")))
        return
    send({"ok": True, "result": {"import_seconds": time.perf_counter() - t0}})
    exited: dict[int, int] = {}
    while True:
        buffer, fds = b"", []
        while not buffer.endswith(b"\n"):  # one request at a time: the parent waits for each reply
            data, got, _, _ = socket.recv_fds(control, 1 << 16, 3)
            if not data:  # the parent closed: leave without the preloads' exit hooks and threads
                os._exit(0)
            buffer, fds = buffer + data, fds + got
        msg = json.loads(buffer)
        if msg["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(msg, fds, control)
            for fd in fds:
                os.close(fd)
            send({"ok": True, "result": {"pid": pid}})
        else:
            send({"ok": True, "result": {"status": _status_of(msg["pid"], exited)}})


if __name__ == "__main__":
    _main(int(sys.argv[1]), json.loads(sys.argv[2]))
