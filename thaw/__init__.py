"""thaw: snapshot the live state of an LLM inference engine and restore it into a fresh one."""

from .core import (ChecksumError, EngineUnsupported, FormatError, Identity, IdentityMismatch,
                   KVLayout, MoverUnavailable, PrefixTree, RequestState, SchemaError,
                   SnapshotIncomplete, StateSnapshot, TensorData, ThawError, load, save)

__version__ = "0.1.0"

__all__ = [
    "ChecksumError", "EngineUnsupported", "FormatError", "Identity", "IdentityMismatch",
    "KVLayout", "MoverUnavailable", "PrefixTree", "RequestState", "SchemaError",
    "SnapshotIncomplete", "StateSnapshot", "TensorData", "ThawError", "load", "save", "__version__",
]
