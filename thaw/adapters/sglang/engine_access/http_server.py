"""SGLang's HTTP server as thaw meets it: whether this process is about to run it, the hook
that hands thaw its app before it serves, its admin auth level, and the scheduler's RPC
socket the server's process talks to the scheduler with."""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
from typing import Any, Callable

from .releases import internals

HTTP_SERVER_MODULE = "sglang.srt.entrypoints.http_server"
HTTP_SETUP = HTTP_SERVER_MODULE + "._setup_and_run_http_server"  # (server_args, tokenizer_manager, template_manager, port_args, ...)
log = logging.getLogger("thaw.sglang")


def starting_http_server() -> bool:
    """In the process that will serve HTTP: `python -m sglang.launch_server` loads plugins
    before importing the server module, `sglang serve` after; scheduler processes are
    children of it, and an in-process `sglang.Engine` never imports the server module."""
    if multiprocessing.parent_process() is not None:
        return False
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return HTTP_SERVER_MODULE in sys.modules or getattr(main_spec, "name", None) == "sglang.launch_server"


def before_http_server_runs(install: Callable[[Any, Any, Any], None]) -> None:
    """Registers `install(app, server_args, port_args)` to run just before SGLang's HTTP
    server sets up its middleware and starts serving (SGLang's own plugin hooks)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def before(*args: Any, **kwargs: Any) -> None:
        from sglang.srt.entrypoints import http_server
        from sglang.srt.server_args import PortArgs, ServerArgs

        values = [*args, *kwargs.values()]
        port_args = next((v for v in values if isinstance(v, PortArgs)), None)
        server_args = next((v for v in values if isinstance(v, ServerArgs)), None)
        if port_args is None or server_args is None:
            log.error("thaw: SGLang's %s no longer takes PortArgs and ServerArgs; thaw's /thaw/ endpoints "
                      "are not available on this server", HTTP_SETUP)
            return None
        install(http_server.app, server_args, port_args)
        return None

    HookRegistry.register(HTTP_SETUP, before, HookType.BEFORE)


def admin_endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` under SGLang's ADMIN_OPTIONAL auth level: the admin API key where the server has
    one, else its API key, else open (as SGLang's own cache and weight endpoints)."""
    from sglang.srt.utils.auth import AuthLevel, auth_level

    return auth_level(AuthLevel.ADMIN_OPTIONAL)(fn)


def single_tokenizer(server_args: Any) -> bool:
    """Whether the HTTP app runs in this process only (SGLang's multi-tokenizer mode serves
    it from worker processes that thaw's routes do not reach)."""
    return int(getattr(server_args, "tokenizer_worker_num", 1) or 1) == 1


class SchedulerRPC:
    """A socket bound at the scheduler's RPC address (`PortArgs.rpc_ipc_name`); `send`
    delivers ``thaw_call(**params)`` as `Engine.collective_rpc` does and waits for the
    scheduler's answer. One call at a time (a lock), from any thread."""

    def __init__(self, port_args: Any) -> None:
        import zmq
        from sglang.srt.utils.network import get_zmq_socket

        self.lock = threading.Lock()
        self.socket = get_zmq_socket(zmq.Context(1), zmq.DEALER, port_args.rpc_ipc_name, True)

    def send(self, params: dict[str, Any]) -> None:
        from sglang.srt.managers.io_struct import RpcReqInput, RpcReqOutput

        from ..rpc import RPCFailed

        request = RpcReqInput(method="thaw_call", parameters=params)
        with self.lock:
            if internals().msgpack_ipc:
                from sglang.srt.managers.io_struct import sock_recv, sock_send

                sock_send(self.socket, request)
                answer = sock_recv(self.socket)
            else:
                self.socket.send_pyobj(request)
                answer = self.socket.recv_pyobj()
        if not isinstance(answer, RpcReqOutput):
            raise RPCFailed(f"unexpected answer from SGLang's scheduler: {answer!r:.200}")
        if not answer.success:
            raise RPCFailed(answer.message)
