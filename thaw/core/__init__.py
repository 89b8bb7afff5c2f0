"""Engine-neutral core of thaw: schema, file format, verification and the movers.

Nothing here imports an inference engine. Names are imported on first use, so that a
command that needs only a few (``thaw --help``, ``thaw verify``) does not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    ".errors": ("ChecksumError", "EngineUnsupported", "FormatError", "IdentityMismatch", "MoverUnavailable",
                "SchemaError", "SnapshotIncomplete", "ThawError"),
    ".kv_layout": ("KVLayout", "KVPlane", "convert_pages", "nhd_layout"),
    ".prefix": ("ROOT", "PrefixNode", "PrefixTree"),
    ".schema": ("CHECKPOINT_WEIGHTS", "Identity", "PagedKV", "RequestState", "StateSnapshot",
                "check_kv_weights", "check_weights_format", "config_digest"),
    ".snapshot_io": ("load", "save"),
    ".tensor_data": ("TensorData",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
