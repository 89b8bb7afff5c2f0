"""The contract between thaw and an inference engine (the registry of adapters is `registry`).

An adapter binds one running engine. Three methods are required; everything else has a
default. Invariants every adapter keeps (the conformance suite checks them):

- **When hooks run.** `identity`, `capture` and `restore` are called by the thread that
  drives the engine, between steps, never while a forward pass or a scheduler step is
  running. The adapter may assume the engine's KV pool, prefix index and queues are
  quiescent for the duration of the call.
- **`capture` only reads.** It returns a `StateSnapshot` whose prefix tree names, for every
  cached token path, the KV pages holding it, and whose pages hold exactly the engine's K/V
  bytes for those tokens (laid out as its `KVLayout` says). It must not evict, lock,
  reorder or free anything, and must not change what the engine generates next.
- **`restore` checks, then changes.** Identity (at least the fields in
  `IDENTITY_FIELDS`), layout shape and capacity are checked, and every byte the engine will
  use is read and CRC-checked (`TensorData.tensor()` / `read_into` do both), *before* the
  engine is changed. A refusal raises a `ThawError` subclass (`IdentityMismatch` naming the
  field, `ChecksumError` naming the section) and leaves the engine serving as it was. Pages
  go into slots taken from the engine's own allocator; an already-cached path is kept, not
  overwritten; nothing is freed twice; a failure after the first change undoes it.
- **Never** hold references to snapshot buffers after `restore` returns unless they are the
  engine's own copies; never write to a snapshot's mapped (read-only) tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Union

from .schema import MATCH_FIELDS, Identity, StateSnapshot

# What a restore must compare before touching anything (engines may check more).
# (`MATCH_FIELDS` is what the shared restore transaction, `thaw.core.restore`, compares.)
IDENTITY_FIELDS = MATCH_FIELDS[:6]


class EngineAdapter(ABC):
    """One running engine, seen by thaw. Subclass and implement the three abstract methods."""

    @abstractmethod
    def identity(self) -> Identity:
        """What the engine runs: model, dtype, KV geometry, page size, layout, versions."""

    @abstractmethod
    def capture(self, *, weights: bool = True) -> StateSnapshot:
        """The engine's state now (see the module's invariants); weights only if asked."""

    @abstractmethod
    def restore(self, snapshot: StateSnapshot, *, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> Any:
        """Hydrates the engine from `snapshot`; returns a report: a JSON-able dict, or an
        object whose `to_json()` gives one. Adapters may also take a path. With
        `weights=False` the engine keeps its weights, whose digest must be known and equal
        the snapshot's (`check_kv_weights`) unless `trust_unknown_weights`."""

    def snapshot(self, path: str, *, weights: bool = True, weights_from: Union[str, None] = None,
                 direct: bool = False, recycle: Union[str, None] = None) -> dict[str, Any]:
        """Writes `capture()` to `path` atomically; returns a report. `weights_from`: a
        snapshot file holding the engine's weights (its digest must equal the identity's),
        referenced instead of copied (`weights_ref`); `direct`: written past the page cache;
        `recycle`: a retired snapshot file in the same directory whose page-cache pages the
        new file overwrites (`write_container`)."""
        from .snapshot_io import save

        snap = self.capture(weights=weights and weights_from is None)
        snap.weights_from = weights_from
        save(snap, path, direct=direct, recycle=recycle)
        return {"tree_nodes": len(snap.prefix.nodes) if snap.prefix else 0,
                "pages": snap.kv.num_pages if snap.kv else 0, "requests": len(snap.requests)}

    def finish_requests(self) -> dict[str, list[int]]:
        """Runs restored in-flight requests to completion; default: the engine has none."""
        return {}


# Where callers have always found them.
from .registry import ADAPTER_GROUP, DRIVER_GROUP, attach, driver_spec, register_adapter, registered_adapters, registered_drivers  # noqa: E402,F401
