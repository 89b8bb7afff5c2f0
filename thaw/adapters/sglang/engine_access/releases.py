"""What differs between the SGLang release lines thaw supports (`RELEASES`), and the calls
whose form depends on it. A release outside them is refused by name."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional


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
