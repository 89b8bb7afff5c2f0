"""thaw: snapshot the live state of an LLM inference engine and restore it into a fresh one."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ChecksumError", "EngineUnsupported", "FormatError", "Identity", "IdentityMismatch",
    "KVLayout", "MoverUnavailable", "PrefixTree", "RequestState", "SchemaError",
    "SnapshotIncomplete", "StateSnapshot", "TensorData", "ThawError", "load", "save", "__version__",
]


def __getattr__(name: str) -> Any:
    """The public names, from thaw.core on first use (the command line starts without numpy)."""
    if name not in __all__:
        raise AttributeError(f"module 'thaw' has no attribute {name!r}")
    from . import core

    value = getattr(core, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
