"""The registry of engines: the adapter `attach(engine, name)` binds, and the driver
(`thaw.core.driver`) that conformance, `thaw.fork` and `thaw.fleet` start in a worker process,
by engine name. Built in: `vllm` and `sglang`; `register_adapter` adds one in this process,
an installed package adds its own through entry points. Importing this imports no engine
(and neither numpy nor torch): names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from .errors import SchemaError

AdapterFactory = Callable[[Any], Any]

# Third-party engines register here from their package metadata, by engine name:
# ``[project.entry-points."thaw.adapters"] myengine = "mypkg.thaw_adapter:attach"`` (the
# adapter factory) and ``[project.entry-points."thaw.drivers"] myengine = "mypkg.driver:Driver"``
# (the driver class that conformance, `thaw.fork` and `thaw.fleet` start in a worker process).
ADAPTER_GROUP = "thaw.adapters"
DRIVER_GROUP = "thaw.drivers"

_ADAPTERS: dict[str, Union[str, AdapterFactory]] = {
    "vllm": "thaw.adapters.vllm:attach",
    "sglang": "thaw.adapters.sglang:attach",
}
_DRIVERS: dict[str, str] = {
    "vllm": "thaw.adapters.vllm.driver:VLLMDriver",
    "sglang": "thaw.adapters.sglang.driver:SGLangDriver",
}


def _installed(group: str) -> dict[str, str]:
    """The entry points installed packages declare in `group`, name -> "module:attr"."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=group)}


def register_adapter(name: str, factory: Union[str, AdapterFactory], *, driver: Union[str, None] = None) -> None:
    """Makes `attach(engine, name)` available; `factory` is a callable or "module:attr"
    (imported on first use, so registering costs nothing). `driver`: the "module:Class" of
    the engine's process driver (`thaw.core.driver.EngineDriver`), for `driver_spec(name)`."""
    if not name or not isinstance(name, str) or ":" in name:
        raise SchemaError("register_adapter: name must be a non-empty string without ':'")
    _ADAPTERS[name] = factory
    if driver is not None:
        _DRIVERS[name] = driver


def registered_adapters() -> list[str]:
    return sorted(set(_ADAPTERS) | set(_installed(ADAPTER_GROUP)))


def registered_drivers() -> list[str]:
    return sorted(set(_DRIVERS) | set(_installed(DRIVER_GROUP)))


def attach(engine: Any, name: str) -> Any:
    """The adapter registered as `name` (here or by an installed package), bound to `engine`."""
    factory = _ADAPTERS.get(name) or _installed(ADAPTER_GROUP).get(name)
    if factory is None:
        raise SchemaError(f"no thaw adapter named {name!r}; registered: {registered_adapters()}")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(engine)


def driver_spec(engine: str) -> str:
    """The driver class, as "module:Class", of an engine named `engine` (registered here or
    by an installed package), or `engine` itself when it is already a "module:Class"."""
    if ":" in engine:
        return engine
    spec = _DRIVERS.get(engine) or _installed(DRIVER_GROUP).get(engine)
    if spec is None:
        raise SchemaError(f"unknown engine {engine!r}; known: {registered_drivers()}, or a driver "
                          "given as 'module:Class'")
    return spec
