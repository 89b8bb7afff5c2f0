"""The one place thaw keeps state on vLLM's objects: an attribute of each, named here.

- `HANDLE` on an `EngineCore`: the `VLLMHandle` bound to it (`core_ops`);
- `WORKER_SIDE` on a `WorkerWrapperBase`: thaw's worker side of it (`worker_ops`);
- `RECORDER` on a `BlockPool`: the `BlockTokenRecorder` of its blocks' tokens (`recorder`);
- `INIT_HOOKS` on the `BlockPool` class: what runs when a pool is built (`block_pool`).

Each is set once, by the module named, on the thread that drives that object.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

HANDLE = "_thaw_handle"
WORKER_SIDE = "_thaw_side"
RECORDER = "_thaw_block_recorder"
INIT_HOOKS = "_thaw_init_hooks"


def kept(obj: Any, name: str, make: Callable[[], Any]) -> Any:
    """`obj`'s own `name` attribute, made (`make()`) and set the first time it is asked for."""
    value = obj.__dict__.get(name)
    if value is None:
        value = make()
        setattr(obj, name, value)
    return value


def held(obj: Any, name: str) -> Optional[Any]:
    """`obj`'s own `name` attribute, or None."""
    return obj.__dict__.get(name)


def hold(obj: Any, name: str, value: Any) -> None:
    setattr(obj, name, value)


def drop(obj: Any, name: str) -> None:
    delattr(obj, name)
