"""How thaw reaches SGLang's internals beyond the scheduler's own attributes (which
`scheduler_ops` reads): the radix cache's tree cores, the HTTP server and the RPC socket.
Read from SGLang 0.5.21's source; a release that drops one of them is refused by name.

- `unified_tree`, `tree_core_backend`, `tree_root`, `walks_nodes`, `device_value`: which
  tree core a radix cache has and how its nodes are read (legacy `RadixCache`, or
  `UnifiedRadixCache` with the Python or the Rust core);
- `slot_walk`: the Rust core's walk of every device slot (`walk_for_kv_canary`);
- `starting_http_server`: whether this process is about to run SGLang's HTTP server;
- `before_http_server_runs`: a SGLang plugin hook that hands thaw the server's FastAPI app
  and the scheduler's RPC address before uvicorn starts;
- `SchedulerRPC`: the RPC socket the server's process talks to the scheduler with (what
  `Engine.collective_rpc` uses in an in-process engine; the HTTP server opens none);
- `admin_endpoint`: marks an endpoint with SGLang's admin auth level.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
from typing import Any, Callable, Optional

HTTP_SERVER_MODULE = "sglang.srt.entrypoints.http_server"
HTTP_SETUP = HTTP_SERVER_MODULE + "._setup_and_run_http_server"  # (server_args, tokenizer_manager, template_manager, port_args, ...)
log = logging.getLogger("thaw.sglang")
PYTHON_TREE_CORE = "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python"


# -- the radix cache's tree cores -----------------------------------------------------------
def unified_tree(tree_cache: Any) -> bool:
    """A `UnifiedRadixCache` (its nodes live in a tree core), not the legacy `RadixCache`."""
    return hasattr(tree_cache, "tree_core")


def tree_core_backend(tree_cache: Any) -> str:
    """"python" or "rust" for a unified cache ("legacy" for the legacy cache)."""
    return str(getattr(tree_cache, "_tree_core_backend", "unknown")) if unified_tree(tree_cache) else "legacy"


def walks_nodes(tree_cache: Any) -> bool:
    """Whether the tree's nodes, with their token ids, can be walked from Python."""
    return tree_core_backend(tree_cache) in ("legacy", "python")


def tree_root(tree_cache: Any) -> Any:
    """The root node of a tree that `walks_nodes`."""
    return tree_cache.tree_core.root_node if unified_tree(tree_cache) else tree_cache.root_node


def device_value(tree_cache: Any, node: Any) -> Optional[Any]:
    """The KV slot indices a node holds (the full-attention component of a unified node)."""
    if unified_tree(tree_cache):
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

        return node.component(ComponentType.FULL).value
    return node.value


def slot_walk(tree_cache: Any) -> Any:
    """The Rust core's list of every device slot in the tree, with its position and the slot
    before it (`slot_indices`, `positions`, `prev_slot_indices`)."""
    from thaw.core import EngineUnsupported

    walk = getattr(tree_cache.tree_core, "walk_for_kv_canary", None)
    if walk is None:
        import sglang

        raise EngineUnsupported(f"SGLang {sglang.__version__}'s Rust tree core has no walk_for_kv_canary, "
                                f"which thaw reads its slots with; start the engine with {PYTHON_TREE_CORE}")
    return walk(False, False)


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
        from sglang.srt.managers.io_struct import RpcReqInput, RpcReqOutput, sock_recv, sock_send

        from .rpc import RPCFailed

        with self.lock:
            sock_send(self.socket, RpcReqInput(method="thaw_call", parameters=params))
            answer = sock_recv(self.socket)
        if not isinstance(answer, RpcReqOutput):
            raise RPCFailed(f"unexpected answer from SGLang's scheduler: {answer!r:.200}")
        if not answer.success:
            raise RPCFailed(answer.message)
