"""How thaw reaches SGLang's internals beyond the scheduler's own attributes (which
`scheduler_ops` reads): the radix cache's tree cores, the HTTP server and the RPC socket.
Read from the source of each supported release line (`RELEASES`: 0.5.14, which pins torch
2.11 and runs on the GPU box, and 0.5.20-0.5.21, which pin torch 2.13 and run on CPU); where
they differ, `internals()` says how. A release outside them, or one that drops what thaw
reads, is refused by name.

- `internals`, `RELEASES`: what differs between the supported release lines;

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

import functools
import logging
import multiprocessing
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

HTTP_SERVER_MODULE = "sglang.srt.entrypoints.http_server"
HTTP_SETUP = HTTP_SERVER_MODULE + "._setup_and_run_http_server"  # (server_args, tokenizer_manager, template_manager, port_args, ...)
log = logging.getLogger("thaw.sglang")
PYTHON_TREE_CORE = "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python"


# -- what differs between release lines -----------------------------------------------------
@dataclass(frozen=True)
class Internals:
    """What one SGLang release line calls the things thaw reaches."""

    component_type_module: str  # where `ComponentType` (FULL, SWA, MAMBA) is defined
    tree_core: bool  # a unified cache keeps its nodes in `tree_cache.tree_core` (Python or Rust)
    radix_key_salt: bool  # `RadixKey(..., cache_salt=)` and `Engine.async_generate(cache_salt=)`
    weight_updater: bool  # `model_runner.weight_updater.update_weights_from_tensor`, else on the runner
    msgpack_ipc: bool  # `io_struct.sock_send` / `sock_recv`, else pickled `send_pyobj` / `recv_pyobj`
    req_kv_info: bool  # a `Req` keeps `req_pool_idx` and `kv_committed_len` in `req.kv`, else on itself


RELEASES: tuple[tuple[tuple[int, int, int], tuple[int, int, int], Internals], ...] = (
    ((0, 5, 14), (0, 5, 15), Internals("sglang.srt.mem_cache.unified_cache_components.tree_component",
                                       tree_core=False, radix_key_salt=False, weight_updater=False,
                                       msgpack_ipc=False, req_kv_info=False)),
    ((0, 5, 20), (0, 5, 22), Internals("sglang.srt.mem_cache.unified_cache.component_type",
                                       tree_core=True, radix_key_salt=True, weight_updater=True,
                                       msgpack_ipc=True, req_kv_info=True)),
)


def release_parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())


@functools.lru_cache(maxsize=None)
def internals_of(version: str) -> Internals:
    from thaw.core import EngineUnsupported

    parts = release_parts(version)
    for lo, hi, found in RELEASES:
        if lo <= parts < hi:
            return found
    lines = ", ".join(f"[{'.'.join(map(str, lo))}, {'.'.join(map(str, hi))})" for lo, hi, _ in RELEASES)
    raise EngineUnsupported(f"SGLang {version} is outside the supported release lines {lines}")


def internals() -> Internals:
    """The installed SGLang's line; EngineUnsupported for a release outside `RELEASES`."""
    import sglang

    return internals_of(sglang.__version__)


def component_type() -> Any:
    """SGLang's `ComponentType` enum (FULL is full-attention KV)."""
    import importlib

    return importlib.import_module(internals().component_type_module).ComponentType


def radix_key(tokens: Any, extra_key: Optional[str], cache_salt: Optional[str]) -> Any:
    """A `RadixKey`; a cache salt where the release has none is refused."""
    from sglang.srt.mem_cache.radix_cache import RadixKey

    if internals().radix_key_salt:
        return RadixKey(tokens, extra_key=extra_key, cache_salt=cache_salt)
    if cache_salt:
        from thaw.core import EngineUnsupported
        import sglang

        raise EngineUnsupported(f"SGLang {sglang.__version__} has no cache salt; a prefix salted "
                                f"{cache_salt!r} cannot be restored into it")
    return RadixKey(tokens, extra_key=extra_key)


def update_weights_from_tensor(model_runner: Any, named: list) -> tuple[bool, str]:
    """SGLang's tensor weight-update path (the model's own `load_weights`)."""
    owner = model_runner.weight_updater if internals().weight_updater else model_runner
    return owner.update_weights_from_tensor(named_tensors=named)


def req_kv(req: Any) -> Any:
    """What holds a scheduler request's `req_pool_idx` and `kv_committed_len`."""
    return req.kv if internals().req_kv_info else req


# -- the radix cache's tree cores -----------------------------------------------------------
def unified_tree(tree_cache: Any) -> bool:
    """A `UnifiedRadixCache`, not the legacy `RadixCache`."""
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    return isinstance(tree_cache, UnifiedRadixCache)


def tree_core_backend(tree_cache: Any) -> str:
    """"python" or "rust" for a unified cache ("legacy" for the legacy cache). A release
    whose unified cache has no tree core keeps its nodes in Python."""
    if not unified_tree(tree_cache):
        return "legacy"
    if not internals().tree_core:
        return "python"
    return str(getattr(tree_cache, "_tree_core_backend", "unknown"))


def walks_nodes(tree_cache: Any) -> bool:
    """Whether the tree's nodes, with their token ids, can be walked from Python."""
    return tree_core_backend(tree_cache) in ("legacy", "python")


def tree_root(tree_cache: Any) -> Any:
    """The root node of a tree that `walks_nodes`."""
    return tree_cache.tree_core.root_node if unified_tree(tree_cache) and internals().tree_core else tree_cache.root_node


def device_value(tree_cache: Any, node: Any) -> Optional[Any]:
    """The KV slot indices a node holds (the full-attention component of a unified node)."""
    if unified_tree(tree_cache):
        return node.component(component_type().FULL).value
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
        from sglang.srt.managers.io_struct import RpcReqInput, RpcReqOutput

        from .rpc import RPCFailed

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
