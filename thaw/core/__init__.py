"""Engine-neutral core of thaw: schema, file format, verification and the movers.

Nothing here imports an inference engine.
"""

from .errors import (ChecksumError, EngineUnsupported, FormatError, IdentityMismatch,
                     MoverUnavailable, SchemaError, SnapshotIncomplete, ThawError)
from .kv_layout import KVLayout, KVPlane, convert_pages, nhd_layout
from .prefix import ROOT, PrefixNode, PrefixTree
from .schema import (CHECKPOINT_WEIGHTS, Identity, PagedKV, RequestState, StateSnapshot,
                     check_kv_weights, check_weights_format, config_digest)
from .snapshot_io import load, save
from .tensor_data import TensorData

__all__ = [
    "ChecksumError", "EngineUnsupported", "FormatError", "IdentityMismatch", "MoverUnavailable",
    "SchemaError", "SnapshotIncomplete", "ThawError", "KVLayout", "KVPlane", "convert_pages", "nhd_layout", "ROOT",
    "PrefixNode", "PrefixTree", "Identity", "PagedKV", "RequestState", "StateSnapshot",
    "config_digest", "CHECKPOINT_WEIGHTS", "check_kv_weights", "check_weights_format", "load", "save", "TensorData",
]
