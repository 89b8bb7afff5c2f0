"""The handle `attach` returns: snapshot, restore, and helpers around them."""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Union

import torch

from thaw.core import StateSnapshot, ThawError, load, save
from thaw.core.prefault import populate_for_write
from thaw.core.snapshot_io import weights_digest
from thaw.core.tensor_data import TensorData

from ..checkpoint import read_checkpoint
from . import engine_access
from .capture import CaptureReport, capture
from .recorder import BlockTokenRecorder
from .restore import RestoreReport, restore

SnapshotSource = Union[str, os.PathLike, StateSnapshot]


class VLLMHandle:
    """Bound to one in-process vLLM engine. Call its methods only while the engine is idle
    (between `generate` calls or `step`s), from the thread that drives the engine."""

    def __init__(self, llm: Any, *, prefault_kv: bool = True) -> None:
        self.parts = engine_access.reach(llm)
        self.recorder = BlockTokenRecorder(self.parts.block_pool, self.parts.block_size)
        # Restores write into KV blocks the engine may never have used; back them now so
        # those writes run at memory speed (contents are not changed).
        t0 = time.perf_counter()
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in self.parts.kv_caches}
        self.kv_prefault = ({populate_for_write(s) for s in storages.values()}
                            if prefault_kv else {"skipped"})
        self.kv_prefault_seconds = time.perf_counter() - t0
        self._weights_digest: Optional[str] = None
        self._restored_weights: Optional[dict[str, TensorData]] = None
        self.resumed_outputs: dict[str, list[int]] = {}
        self._registrations: dict[tuple, Any] = {}
        self._opened: Optional[tuple[tuple, StateSnapshot]] = None
        self.last_capture: Optional[CaptureReport] = None
        self.last_restore: Optional[RestoreReport] = None

    # -- weights --------------------------------------------------------------------
    def checkpoint_weights(self) -> dict[str, torch.Tensor]:
        """The checkpoint tensors the engine loaded (by checkpoint name).

        On vLLM's CPU backend linear weights are repacked for oneDNN and cannot be read
        back from the model, so the snapshot takes them from the checkpoint the engine
        was loaded from, or from the snapshot it was last restored from.
        """
        if self._restored_weights is not None:
            return {name: data.tensor() for name, data in self._restored_weights.items()}
        return read_checkpoint(self.parts.core.vllm_config.model_config.model,
                               dummy=engine_access.loads_dummy_weights(self.parts))

    def weights_digest(self) -> str:
        if self._weights_digest is None:
            try:
                w = self.checkpoint_weights()
            except ThawError:
                return ""
            self._weights_digest = weights_digest({k: TensorData.of(v) for k, v in w.items()})
        return self._weights_digest

    def identity(self):
        return engine_access.engine_identity(self.parts, self.weights_digest())

    # -- snapshot -------------------------------------------------------------------
    def capture(self, *, weights: bool = True) -> StateSnapshot:
        """An in-memory StateSnapshot of the engine (KV copied out, weights referenced)."""
        snap, self.last_capture = capture(self.parts, self.recorder, self.identity(),
                                          self.checkpoint_weights() if weights else None)
        return snap

    def snapshot(self, path: Union[str, os.PathLike], *, weights: bool = True) -> CaptureReport:
        """Writes the engine's state to `path` atomically; returns what was captured."""
        save(self.capture(weights=weights), path)
        return self.last_capture

    # -- restore --------------------------------------------------------------------
    def restore(self, source: SnapshotSource, *, weights: bool = True,
                requests: bool = True) -> RestoreReport:
        """Hydrates this engine from a snapshot file or object.

        Every byte the engine receives (weights, KV pages, prefix index, requests) has its
        CRC32C checked before the engine is touched. A ThawError subclass is raised before
        anything changes when the snapshot does not fit (identity, layout, capacity,
        request ids) or is corrupted. `weights=False` keeps the engine's own weights (they
        must then match the snapshot's digest); `requests=False` skips in-flight requests.
        """
        t0 = time.perf_counter()
        snap = source if isinstance(source, StateSnapshot) else self._opened_snapshot(source)
        verify_seconds = time.perf_counter() - t0
        report, resumed = restore(self.parts, snap, self.recorder, engine_id=self.identity(),
                                  engine_weights_digest=self.weights_digest(),
                                  load_weights=weights, resume=requests, registry=self._registered_file)
        report.seconds["open"] = verify_seconds
        if report.weights_restored:
            self._restored_weights = dict(snap.weights)  # file-backed; read again only to capture
            self._weights_digest = snap.identity.weights_digest
        self.resumed_outputs.update(resumed)
        self.last_restore = report
        return report

    def _opened_snapshot(self, path: Union[str, os.PathLike]) -> StateSnapshot:
        """The snapshot at `path`, opened once and kept while the file is the same one (path,
        inode, size, modification time): forks restore the same file again and again, and
        re-reading a large file's header and section table cost them tens of milliseconds.
        Every section's bytes are still checked against their CRCs when read."""
        key = _file_key(path)
        if self._opened is None or self._opened[0] != key:
            self._opened = (key, load(path, verify=False))
        return self._opened[1]

    def _registered_file(self, container: Any) -> Any:
        """The snapshot file mapped and registered with CUDA, kept for later restores of the
        same file; registering another file releases the previous one (restores are
        synchronous, so nothing is reading it any more)."""
        from thaw.core.gpu import RegisteredFile

        key = _file_key(container.path)
        if key not in self._registrations:
            for old in self._registrations.values():
                old.close()
            self._registrations = {key: RegisteredFile(container)}
        return self._registrations[key]

    def finish_requests(self) -> dict[str, list[int]]:
        """Steps the engine until every request finishes; returns each one's full output,
        including tokens generated before a snapshot for resumed requests."""
        engine = self.parts.llm.llm_engine
        out: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    prior = self.resumed_outputs.pop(o.request_id, [])
                    out[o.request_id] = prior + list(o.outputs[0].token_ids)
        return out

    def detach(self) -> None:
        self.recorder.detach()


def _file_key(path: Union[str, os.PathLike]) -> tuple:
    """Which file is at `path` now: replaced or rewritten files get a new key."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


def attach(llm: Any, *, prefault_kv: bool = True) -> VLLMHandle:
    """Binds thaw to an in-process `vllm.LLM`. Attach right after creating the engine:
    blocks cached before attaching have no recorded tokens and are reported, not saved.

    With `prefault_kv` (default) the engine's host KV buffer is backed by memory now, so
    that later restores write at memory speed; `handle.kv_prefault` says how it went and
    `handle.kv_prefault_seconds` what it cost."""
    return VLLMHandle(llm, prefault_kv=prefault_kv)
