"""Where a vLLM restore puts KV pages: fresh blocks written first, hashes registered last.

`KVPlacement` only looks when built; `stage` (CUDA) checks pages in GPU memory, `allocate`
is the first change to the engine, `move` fills blocks nothing can reach yet, `register`
makes them prefix-cache hits, `rollback` undoes whatever was done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from thaw.core import EngineUnsupported, StateSnapshot, ThawError, convert_pages

from .engine_access import EngineParts, PoolEdit
from .pages import page_depths, page_index, page_parents, page_record
from .worker_ops import scatter_pages
from .recorder import BlockTokenRecorder


@dataclass
class RestoreReport:
    pages_in_snapshot: int = 0
    pages_written: int = 0
    pages_already_cached: int = 0
    weights_restored: int = 0
    requests_resumed: list[str] = field(default_factory=list)
    layout_converted: bool = False
    kv_bytes: int = 0
    identity_differences: dict[str, Any] = field(default_factory=dict)  # reported, not refused
    recut: Optional[dict[str, Any]] = None  # set when pages were re-cut to this block size
    weights_format: Optional[str] = None  # when weights were restored: their format,
    weights_route: Optional[str] = None  # the way they took (see weights.WeightsLoad)
    weights_bytes: int = 0
    kv_from: Optional[str] = None  # "file" (registered, uploaded), "host", "device" (prepared), "worker"
    tp_resharded: Optional[list[int]] = None  # [snapshot's ranks, engine's]: KV heads re-cut between sizes
    # Where the snapshot file was not in the page cache (thaw.core.residency): the share of
    # it that was, when the restore read it from the disk instead of mapping it.
    cold_file_resident: Optional[float] = None
    seconds: dict[str, float] = field(default_factory=dict)  # checks, weights, kv, requests

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class KVPlacement:
    """Puts snapshot pages into fresh engine blocks, then registers their hashes.

    Construction only looks (pages the engine already caches, capacity) and raises before
    anything changes. `allocate` + `move` fill blocks the engine cannot reach yet (no
    hash); `register` makes them prefix-cache hits; `rollback` undoes whatever was done.
    """

    def __init__(self, parts: EngineParts, snap: StateSnapshot, hashes: list[bytes],
                 report: RestoreReport, reuse_cached: bool = True) -> None:
        """`reuse_cached=False` (a restore that replaces the weights): every page is written
        into a fresh block, none taken from the cache, whose blocks were computed with the
        weights being replaced."""
        self.parts, self.snap, self.hashes, self.report = parts, snap, hashes, report
        self.pool = PoolEdit(parts.block_pool, hashes)
        existing = {}
        for page in range(len(hashes)) if reuse_cached else ():
            blk = self.pool.cached(page)
            if blk is not None:
                existing[page] = blk
        self.held = list(existing.values())
        self.needed = [p for p in range(len(hashes)) if p not in existing]
        report.pages_already_cached = len(existing)
        free = self.pool.free_count() - sum(1 for b in self.held if b.ref_cnt == 0)
        if len(self.needed) > free:
            raise ThawError(f"the engine has {self.pool.free_count()} free KV blocks; the snapshot "
                            f"needs {len(self.needed)} more (pages not already cached)")
        self.fresh: list = []
        self.inserted: list = []
        self._staged: Optional[list[torch.Tensor]] = None  # CUDA: checked pages in GPU memory
        self._placed: Optional[list[int]] = None  # worker engines: the blocks `stage` filled

    @property
    def every_page(self) -> bool:
        return len(self.needed) == len(self.hashes)

    def allocate(self) -> None:
        self.pool.hold(self.held)  # keep hit blocks from being evicted while allocating
        self.fresh = self.pool.take(len(self.needed))
        if self._placed is not None and [b.block_id for b in self.fresh] != self._placed:
            placed, self._placed = self._placed, None
            self.pool.forget(placed)
            raise ThawError("internal: the KV blocks vLLM allocated are not the ones the worker filled; "
                            "their cached hashes were dropped and the restore undone")

    def move(self, pages: Optional[list[torch.Tensor]], resident: Optional[torch.Tensor] = None) -> None:
        """Writes the needed pages into the allocated blocks: for CPU engines from `pages`
        (verified [num_pages, page_elems] layers); for CUDA engines from what `stage` checked
        in GPU memory, or from `resident`: every layer's pages of the file, checked when
        prepared, in device memory."""
        if not self.needed:
            return
        if self.parts.workers is not None:  # the worker process filled them in `stage`
            self._placed = None
            return
        kv0 = self.parts.kv_caches[0]
        ids = torch.tensor([b.block_id for b in self.fresh], dtype=torch.long, device=kv0.device)
        if resident is not None:
            from thaw.core.gpu import PagePlan

            PagePlan(self.parts.kv_caches, ids).scatter(resident)  # one kernel, device to device
            self.report.kv_bytes += resident.numel()
            self.report.kv_from = "device"
            return
        if kv0.is_cuda:
            from thaw.core.gpu import PagePlan, scatter_staged

            if self._staged is None:
                raise ThawError("internal: CUDA pages were not staged before the move")
            staged, self._staged = self._staged, None
            scatter_staged([PagePlan([t], ids) for t in self.parts.kv_caches], staged)
            self.report.kv_bytes += sum(v.numel() for v in staged)
            return
        self.report.kv_from = "host"
        # One scatter per run of consecutive snapshot pages, straight from the (mapped)
        # source: no intermediate copy.
        self.report.kv_bytes += scatter_pages(self.parts.kv_caches, [self._in_engine_layout(p) for p in pages],
                                              self.needed, [b.block_id for b in self.fresh])

    def _in_engine_layout(self, layer_pages: torch.Tensor) -> torch.Tensor:
        """One layer's pages re-laid out for the engine where the snapshot's layout differs."""
        if self.snap.kv.layout == self.parts.layout:
            return layer_pages
        self.report.layout_converted = True
        return convert_pages(layer_pages, self.snap.kv.layout, self.parts.layout)

    def stage(self, pages: Optional[list[torch.Tensor]], registered: Optional[Any] = None) -> None:
        """CUDA engines, before `allocate` (which may evict cached blocks): uploads the needed
        pages into one GPU staging buffer and checks every byte there, raising ChecksumError
        before the engine changes. From `registered` (the snapshot file registered with
        CUDA, every page in the engine's layout: its KV sections as they are, checked
        against the file's chunk CRCs), else from `pages` (verified host layers).
        Engines whose KV lives in a worker process, in one round trip: the worker maps the
        file's KV layers, checks every chunk and only then writes the pages into the blocks
        `allocate` will take (read from the free queue, which nothing else changes while a
        thaw call runs); those blocks are free, unreachable by a hash once taken. A refusal
        (a `ThawError`) writes nothing; any other failure drops those blocks' cached hashes."""
        if self.needed and self.parts.workers is not None:
            if self.snap.source is None:
                raise EngineUnsupported(
                    "this engine's KV lives in a worker process, which reads the snapshot file itself: an "
                    "in-memory snapshot, or one re-cut to another block size, cannot be restored into it "
                    "(re-cut the file with `thaw convert --page-size N` first)")
            targets = self.pool.next_new(len(self.needed), self.held)
            try:
                placed = self.parts.workers.call("place_kv", path=self.snap.source.path, needed=self.needed,
                                                 block_ids=targets)
            except ThawError:
                raise
            except BaseException:
                self.pool.forget(targets)
                raise
            self._placed = targets
            self.report.layout_converted = placed["layout_converted"]
            self.report.kv_bytes += placed["kv_bytes"]
            self.report.kv_from = "worker"
            return
        if not self.needed or not self.parts.on_cuda:
            return
        kv0 = self.parts.kv_caches[0]
        from thaw.core.gpu import upload_checked

        expected, names, chunk_size = None, None, 4 << 20
        if registered is not None:
            sections = [layer._section for layer in self.snap.kv.layers]
            host = [registered.section(n) for n in sections]
            for n in sections:
                registered.check_padding(n)
            secs = [registered.container.section(n) for n in sections]
            expected = [list(sec.chunk_crcs) for sec in secs]
            chunk_size = secs[0].chunk_size
            names = [f"section {n!r}" for n in sections]
            self.report.kv_from = "file"
        else:
            idx = torch.tensor(self.needed, dtype=torch.long)
            host = []
            for layer_pages in pages:
                layer_pages = self._in_engine_layout(layer_pages)
                pinned = torch.empty((len(self.needed), layer_pages.shape[1]), dtype=layer_pages.dtype,
                                     pin_memory=True)
                torch.index_select(layer_pages, 0, idx, out=pinned)
                host.append(pinned)
            self.report.kv_from = "host"
        total = sum(h.numel() * h.element_size() for h in host)
        staging = torch.empty(total, dtype=torch.uint8, device=kv0.device)
        self._staged = upload_checked(host, staging, expected_crcs=expected, chunk_size=chunk_size, names=names)

    def register(self, recorder: BlockTokenRecorder) -> None:
        snap, hashes = self.snap, self.hashes
        parents = page_parents(snap)
        depth = page_depths(snap)
        index = page_index(snap)
        for page, blk in zip(self.needed, self.fresh):
            self.pool.register(page, blk, num_tokens=(depth[page] + 1) * self.parts.block_size)
            self.inserted.append(blk)
            parent = parents[page]
            recorder.add(hashes[page], page_record(snap, index, page,
                                                    hashes[parent] if parent is not None else None))
        # Deepest pages first: they are evicted before their parents, as vLLM itself orders it.
        order = sorted(zip(self.needed, self.fresh), key=lambda pb: -depth[pb[0]])
        self.pool.release([b for _, b in order])
        self.pool.release(self.held)
        self.report.pages_written = len(self.needed)
        self.fresh, self.held = [], []

    def unstage(self) -> None:
        """Drops what `stage` kept (after a failure before `allocate`; the pool is untouched)."""
        self._staged = None
        if self._placed is not None:  # filled but never taken: their cached hashes no longer hold
            self.pool.forget(self._placed)
            self._placed = None

    def rollback(self) -> None:
        for blk in self.inserted:
            self.pool.evict(blk)
        self.pool.release(self.fresh)
        self.pool.release(self.held)
        self.fresh, self.held, self.inserted = [], [], []
