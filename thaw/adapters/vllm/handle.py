"""The handle `attach` returns: snapshot, restore, and helpers around them."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import torch

from thaw.core.phase_clock import PhaseClock
from thaw.core import EngineUnsupported, SnapshotIncomplete, StateSnapshot, ThawError, save
from thaw.core.adapter import EngineAdapter
from thaw.core.engine_weights import EngineWeights
from thaw.core import weights_ref
from thaw.core.object_store import absolute
from thaw.core.prefault import populate_for_write
from thaw.core.snapshot_io import weights_digest
from thaw.core.tensor_data import TensorData
from thaw.core.tp_files import RankSetWriter

from thaw.core.checkpoint import NoCheckpoint, read_checkpoint
from . import engine_access
from .capture import CaptureReport, capture, capture_index
from .recorder import BlockTokenRecorder
from .kv_placement import RestoreReport
from .prepared import PreparedFiles
from .restore import VLLMRestore
from thaw.core.restore import run_restore
from .worker_ops import prefix_to_json
from .weights import PARAMETERS_FORMAT, check_format, native_format, parameters, parameters_digest

SnapshotSource = Union[str, os.PathLike, StateSnapshot]
logger = logging.getLogger("thaw.vllm")


class VLLMHandle(EngineAdapter):
    """Bound to one vLLM engine core, in the process the core runs in: the caller's for an
    in-process `LLM`, the EngineCore process otherwise (see `core_ops`). Call its
    methods only while the engine is idle (between `generate` calls or `step`s), from the
    thread that drives the engine."""

    def __init__(self, parts: engine_access.EngineParts, *, prefault_kv: bool = True) -> None:
        self.parts = parts
        self.recorder = BlockTokenRecorder.of_pool(self.parts.block_pool, self.parts.block_size)
        # Restores write into KV blocks the engine may never have used; back them now so
        # those writes run at memory speed (contents are not changed).
        clock = PhaseClock()
        if not prefault_kv:
            self.kv_prefault = {"skipped"}
        elif parts.workers is not None:
            self.kv_prefault = set(parts.workers.call("prefault"))
        else:
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in self.parts.kv_caches}
            self.kv_prefault = {populate_for_write(s) for s in storages.values()}
        self.kv_prefault_seconds = clock.lap("prefault")
        # What the weights are known to be (an engine started with dummy weights has none
        # until a restore brings them); the restore transaction reports to it.
        self.weights = EngineWeights(known=not engine_access.loads_dummy_weights(self.parts))
        self.resumed_outputs: dict[str, list[int]] = {}
        self.files = PreparedFiles(parts)  # snapshots opened, registered, KV kept on the device
        self.last_capture: Optional[CaptureReport] = None
        self.last_restore: Optional[RestoreReport] = None

    # -- weights --------------------------------------------------------------------
    def checkpoint_weights(self) -> dict[str, torch.Tensor]:
        """The checkpoint tensors the engine loaded (by checkpoint name): from the checkpoint
        the engine was loaded from, or from the snapshot it was last restored from."""
        restored = self.weights.restored_tensors()
        if restored is not None:
            return restored
        return read_checkpoint(engine_access.model_path(self.parts),
                               dummy=engine_access.loads_dummy_weights(self.parts))

    def weights_digest(self, weights_format: Optional[str] = None) -> str:
        """Digest of the engine's weights in `weights_format` (default: the engine's own,
        `weights.native_format`); "" when the weights are unknown (dummy, not restored).

        Cached until a restore replaces the weights: after changing the engine's weights
        any other way, call `forget_weights_digest`."""
        fmt = weights_format or native_format(self.parts)
        check_format(self.parts, fmt)
        return self.weights.digest(fmt, lambda: self._compute_digest(fmt))

    def _compute_digest(self, fmt: str) -> str:
        if fmt == PARAMETERS_FORMAT:
            return parameters_digest(parameters(self.parts))
        try:
            w = self.checkpoint_weights()
        except NoCheckpoint:  # dummy weights never restored: unknown (a corrupt file raises)
            return ""
        return weights_digest({k: TensorData.of(v) for k, v in w.items()})

    def forget_weights_digest(self) -> None:
        """Drops the cached digests, for weights changed outside thaw."""
        self.weights.forget()

    def identity(self):
        """The engine's identity, with its weights digest in the engine's own format."""
        return engine_access.engine_identity(self.parts, self.weights_digest())

    def status(self) -> dict[str, Any]:
        """Identity, block counts and in-flight requests, as plain JSON."""
        return {"engine": "vllm", "identity": self.identity().to_json(), **engine_access.counts(self.parts.block_pool),
                "requests_in_flight": len(engine_access.in_flight_requests(self.parts)),
                "model_in_worker_process": self.parts.workers is not None,
                "weights_inconsistent": self.weights.inconsistent,
                "kv_prefault": sorted(self.kv_prefault), "kv_prefault_seconds": self.kv_prefault_seconds}

    # -- snapshot -------------------------------------------------------------------
    def capture(self, *, weights: bool = True, weights_format: Optional[str] = None,
                strict: bool = False, requests: bool = True, for_writer: bool = False) -> StateSnapshot:
        """An in-memory StateSnapshot of the engine (KV copied out; weights copied out, or
        referenced from the checkpoint). `weights_format` (default: the engine's own) names
        how weights are stored and what the identity's weights digest covers.

        Cached blocks that cannot be captured (tokens unknown, LoRA/multimodal keys, parent
        evicted) are left out with a warning naming how many and why; with `strict` that
        raises `SnapshotIncomplete` instead, before anything is written. In-flight requests
        are captured when `requests`; one whose settings a snapshot cannot carry exactly is
        refused by name (EngineUnsupported). `for_writer` holds CUDA weights and KV on the
        device, for a snapshot written before the engine runs again (`snapshot` does)."""
        self.weights.refuse_if_inconsistent()
        fmt = weights_format or native_format(self.parts)
        check_format(self.parts, fmt)
        tensors = None
        if weights and fmt == PARAMETERS_FORMAT:
            if not self.weights.known:
                raise ThawError("the engine runs dummy weights and was not restored: no weights to capture")
            tensors = parameters(self.parts)
        elif weights:
            tensors = self.checkpoint_weights()
        identity = engine_access.engine_identity(self.parts, self.weights_digest(fmt))
        snap, self.last_capture = capture(self.parts, self.recorder, identity, tensors, requests=requests,
                                          for_writer=for_writer)
        report_missing_blocks(self.last_capture, strict=strict,
                              recorder_from_start=self.recorder.since_pool_start)
        snap.weights_format = fmt
        return snap

    def snapshot(self, path: Union[str, os.PathLike], *, weights: bool = True,
                 weights_format: Optional[str] = None, strict: bool = False,
                 requests: bool = True, weights_from: Optional[Union[str, os.PathLike]] = None,
                 direct: bool = False, recycle: Optional[Union[str, os.PathLike]] = None) -> CaptureReport:
        """Writes the engine's state to `path` atomically; returns what was captured.
        `strict`: refuse (SnapshotIncomplete) rather than leave cached blocks out;
        `requests=False`: leave in-flight requests out; `weights_from`: a snapshot file
        holding this engine's weights (same format and digest, checked first), which the
        new snapshot references instead of copying them (`thaw.core.weights_ref`);
        `direct`: write past the page cache (`thaw.core.container.write_container`);
        `recycle`: a retired snapshot file in the same directory whose page-cache pages the
        new file overwrites (taken at once, even if the snapshot then fails: `write_container`)."""
        self.weights.refuse_if_inconsistent()
        fmt = weights_format or native_format(self.parts)
        ref = weights_ref.reference_for_snapshot(weights_from, path, weights=weights, weights_format=fmt,
                                                 weights_digest=lambda: self.weights_digest(fmt))
        recycle = None if recycle is None else absolute(recycle)
        if self.parts.workers is not None:
            return self._snapshot_in_worker(path, weights=weights, weights_format=weights_format,
                                            strict=strict, requests=requests, weights_from=ref, direct=direct,
                                            recycle=recycle)
        clock = PhaseClock()
        snap = self.capture(weights=weights and ref is None, weights_format=weights_format, strict=strict,
                            requests=requests, for_writer=True)  # staged from the device by the writer
        snap.weights_from = ref
        clock.lap("capture")
        save(snap, path, timings=clock.seconds, direct=direct, recycle=recycle)
        self.last_capture.seconds = clock.seconds
        return self.last_capture

    def _snapshot_in_worker(self, path: Union[str, os.PathLike], *, weights: bool,
                            weights_format: Optional[str], strict: bool, requests: bool,
                            weights_from: Optional[str] = None, direct: bool = False,
                            recycle: Optional[str] = None) -> CaptureReport:
        """The model runs in a worker process: the core captures the prefix index (and
        requests), the worker gathers its KV blocks and weights and writes the file."""
        size = engine_access.tp_size(self.parts)
        if size > 1 and recycle is not None:
            raise ThawError(f"recycle takes one retired file; a tensor-parallel snapshot ({size} rank files in "
                            f"{path}) is written into fresh files")
        fmt = weights_format or native_format(self.parts)
        check_format(self.parts, fmt)
        identity = engine_access.engine_identity(self.parts, self.weights_digest(fmt))
        tree, block_ids, in_flight, report = capture_index(self.parts, self.recorder, requests=requests)
        report_missing_blocks(report, strict=strict, recorder_from_start=self.recorder.since_pool_start)
        source: dict[str, Any] = {}
        if weights_from is not None:
            source = {"from": weights_from}
        elif weights and self.weights.restored is not None:
            if self.weights.restored_from is None:
                raise ThawError("the engine's weights came from an in-memory snapshot, which its worker "
                                "process cannot read: snapshot with weights=False")
            source = {"snapshot": self.weights.restored_from}
        elif weights:
            if engine_access.loads_dummy_weights(self.parts):
                raise ThawError("the engine runs dummy weights and was not restored: no weights to capture")
            source = {"checkpoint_of": engine_access.model_path(self.parts)}
        meta = {"identity": identity.to_json(), "weights_format": fmt, "layout": self.parts.layout.to_json(),
                "prefix": prefix_to_json(tree), "requests": [r.to_json() for r in in_flight],
                "extras": {"vllm": {"capture": report.to_json()}}}
        path = absolute(path)
        if size == 1:
            saved = [self.parts.workers.call("save", path=path, meta=meta, block_ids=block_ids, weights=source,
                                             direct=direct, recycle=recycle)]
        else:  # one rank file per worker, swapped in as one set when every rank has written
            with RankSetWriter(path, size) as writer:
                saved = self.parts.workers.call_each("save", path=str(writer.staging), meta=meta,
                                                     block_ids=block_ids, weights=source, set_id=writer.set_id,
                                                     direct=direct)
                writer.commit()
        phases = {k for r in saved for k in r["seconds"]}
        report.seconds = {k: max(r["seconds"].get(k, 0.0) for r in saved) for k in phases}  # the slowest rank's
        self.last_capture = report
        return report

    def prepare(self, path: Union[str, os.PathLike], *, kv_on_device: bool = False) -> float:
        """Opens the snapshot at `path` (and, for a CUDA engine, maps it and registers it
        with CUDA, with the file its weights are referenced from, if any) ahead of restores
        from it, so that they start at once; returns the seconds it took. Restores do the
        same on first use.

        `kv_on_device` (CUDA only): also copies the snapshot's KV pages into GPU memory
        outside the engine's pool (their size, reported by the restore as `kv_bytes`),
        checked as they land; later restores of every page of this file scatter them from
        there instead of the link, e.g. a fork server restoring one trunk again and again.
        Preparing another file, or `release_prepared`, frees them."""
        return self.files.prepare(path, kv_on_device=kv_on_device)

    def release_prepared(self) -> None:
        """Frees what `prepare` and restores from files hold: CUDA registrations and KV
        pages kept on the device."""
        self.files.release()

    # -- restore --------------------------------------------------------------------
    def restore(self, source: SnapshotSource, *, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> RestoreReport:
        """Hydrates this engine from a snapshot file or object.

        Every byte the engine receives (weights, KV pages, prefix index, requests) has its
        CRC32C checked before the engine is touched. A ThawError subclass is raised before
        anything changes when the snapshot does not fit (identity, layout, capacity,
        request ids) or is corrupted. `weights=False` keeps the engine's own weights (they
        must then match the snapshot's digest; an unknown digest on either side is refused
        unless `trust_unknown_weights`); `requests=False` skips in-flight requests.
        """
        clock = PhaseClock()
        if isinstance(source, StateSnapshot):
            snap, ranks = source, source.identity.tp_size
        else:
            snap, ranks = self.files.opened(source)
        clock.lap("open")
        report = RestoreReport()
        outcome = run_restore(VLLMRestore(self, snap, report), snap, weights=weights, requests=requests,
                              trust_unknown_weights=trust_unknown_weights)
        report.identity_differences, report.recut = outcome.identity_differences, outcome.recut
        report.weights_restored, report.weights_route = outcome.weights_loaded, outcome.weights_route
        report.seconds = {**outcome.seconds, **clock.seconds}
        if ranks != engine_access.tp_size(self.parts):
            report.tp_resharded = [ranks, engine_access.tp_size(self.parts)]
        self.resumed_outputs.update(outcome.resumed or {})
        self.last_restore = report
        return report

    def finish_requests(self) -> dict[str, list[int]]:
        """Steps the engine until every request finishes; returns each one's full output,
        including tokens generated before a snapshot for resumed requests."""
        if self.parts.front is None:
            raise EngineUnsupported(engine_access.NO_FRONT)
        engine = self.parts.front.engine
        out: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    prior = self.resumed_outputs.pop(o.request_id, [])
                    out[o.request_id] = prior + list(o.outputs[0].token_ids)
        return out

    def detach(self) -> None:
        self.recorder.detach()


def report_missing_blocks(report: CaptureReport, *, strict: bool, recorder_from_start: bool) -> None:
    """Warns (or, `strict`, raises SnapshotIncomplete) when cached blocks were left out."""
    reasons = {"tokens unknown (cached before thaw recorded this engine"
               + ("" if recorder_from_start else "; install thaw where vLLM runs so its "
                  "vllm.general_plugins entry point records from the engine's start") + ")":
               report.unknown_blocks,
               "LoRA, multimodal or prompt-embeds blocks": report.unsupported_blocks,
               "parent block no longer cached": report.orphan_blocks}
    missing = {why: len(ids) for why, ids in reasons.items() if ids}
    if not missing:
        return
    text = (f"snapshot captures {report.captured_blocks} of the {report.cached_blocks} blocks the "
            "engine caches; left out: " + "; ".join(f"{n} {why}" for why, n in missing.items()))
    if strict:
        raise SnapshotIncomplete(text)
    logger.warning(text)


def attach(engine: Any, *, prefault_kv: bool = True) -> Any:
    """Binds thaw to a vLLM engine, at any time: thaw's vLLM plugin records the tokens of
    every block from the engine's start (without it, blocks cached before attaching are
    left out of snapshots, with a warning).

    - an in-process `vllm.LLM` (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): a `VLLMHandle`,
      working on the engine's objects directly, in-flight requests included;
    - a `vllm.LLM` in vLLM's default multiprocess mode: a `RemoteVLLMHandle`, whose calls
      run inside the EngineCore process between scheduler steps (KV bytes move between
      the engine's memory and the file there, never through this process);
    - a `vllm.AsyncLLM` (what `vllm serve` and RL frameworks run): an `AsyncVLLMHandle`
      with awaitable methods, likewise.

    With `prefault_kv` (default) the engine's host KV buffer is backed by memory now, so
    that later restores write at memory speed; `handle.kv_prefault` says how it went and
    `handle.kv_prefault_seconds` what it cost."""
    kind, target = engine_access.engine_client(engine)
    if kind == "inprocess":
        return VLLMHandle(engine_access.reach_core(target, engine_access.RequestFront(engine)),
                          prefault_kv=prefault_kv)
    from .remote import AsyncVLLMHandle, RemoteVLLMHandle

    if kind == "sync":
        return RemoteVLLMHandle(target, prefault_kv=prefault_kv)
    return AsyncVLLMHandle(target, prefault_kv=prefault_kv)
