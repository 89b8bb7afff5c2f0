"""Where a vLLM restore puts KV pages: one placement per place the KV lives, chosen once.

Every placement implements `thaw.core.restore.KVPlacement` over the engine's block pool:
construction only looks (pages the engine already caches, capacity); `stage` checks what
can be checked before the first change; `allocate` takes fresh blocks (the first change);
`write` fills them while no hash names them; `register` makes them prefix-cache hits;
`rollback` undoes whatever was done. They differ in where the pages come from:

- `HostPages`: the engine's KV in this process's memory (CPU): verified pages of the mapped
  file scattered into the blocks.
- `CudaPages`: the KV on a GPU in this process: pages uploaded into one staging buffer and
  checked there (from the CUDA-registered file, else from verified host pages), then
  scattered on the device.
- `DevicePages`: every page of a prepared file, already checked in GPU memory.
- `WorkerPages`: the KV in worker processes, which read and check the file themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from thaw.core import EngineUnsupported, StateSnapshot, ThawError, convert_pages
from thaw.core.residency import COLD_BELOW, resident_fraction

from .engine_access import EngineParts, PoolEdit
from .pages import page_depths, page_index, page_parents, page_record
from .recorder import BlockTokenRecorder
from .worker_ops import scatter_pages


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
    seconds: dict[str, float] = field(default_factory=dict)  # thaw.core.restore's phases, and "open"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PoolView:
    """What a restore finds in the block pool, looked at once: the pool's edit for these
    hashes, the blocks already caching pages (`held`) and the pages still to write."""

    pool: PoolEdit
    held: list
    needed: list[int]

    @classmethod
    def look(cls, parts: EngineParts, hashes: list[bytes], report: RestoreReport, *,
             reuse_cached: bool) -> "PoolView":
        """`reuse_cached=False` (a restore that replaces the weights): every page is written
        into a fresh block, none taken from the cache, whose blocks were computed with the
        weights being replaced. Refuses (ThawError) when the free blocks cannot hold them."""
        pool = PoolEdit(parts.block_pool, hashes)
        existing = {}
        for page in range(len(hashes)) if reuse_cached else ():
            blk = pool.cached(page)
            if blk is not None:
                existing[page] = blk
        held, needed = list(existing.values()), [p for p in range(len(hashes)) if p not in existing]
        report.pages_already_cached = len(existing)
        free = pool.free_count() - sum(1 for b in held if b.ref_cnt == 0)
        if len(needed) > free:
            raise ThawError(f"the engine has {pool.free_count()} free KV blocks; the snapshot "
                            f"needs {len(needed)} more (pages not already cached)")
        return cls(pool, held, needed)


class BlockPlacement:
    """The pool side every placement shares: cached pages kept, fresh blocks taken for the
    rest, hashes registered last. Subclasses fill the blocks (`write`, maybe `stage`)."""

    def __init__(self, parts: EngineParts, snap: StateSnapshot, hashes: list[bytes], report: RestoreReport,
                 recorder: BlockTokenRecorder, view: PoolView) -> None:
        self.parts, self.snap, self.hashes, self.report, self.recorder = parts, snap, hashes, report, recorder
        self.pool, self.held, self.needed = view.pool, view.held, view.needed
        self.fresh: list = []
        self.inserted: list = []

    def stage(self) -> None:
        """Nothing to check before the first change (the default)."""

    def allocate(self) -> None:
        self.pool.hold(self.held)  # keep hit blocks from being evicted while allocating
        self.fresh = self.pool.take(len(self.needed))

    def write(self) -> None:
        raise NotImplementedError

    def register(self) -> None:
        snap, hashes = self.snap, self.hashes
        parents = page_parents(snap)
        depth = page_depths(snap)
        index = page_index(snap)
        for page, blk in zip(self.needed, self.fresh):
            self.pool.register(page, blk, num_tokens=(depth[page] + 1) * self.parts.block_size)
            self.inserted.append(blk)
            parent = parents[page]
            self.recorder.add(hashes[page], page_record(snap, index, page,
                                                         hashes[parent] if parent is not None else None))
        # Deepest pages first: they are evicted before their parents, as vLLM itself orders it.
        order = sorted(zip(self.needed, self.fresh), key=lambda pb: -depth[pb[0]])
        self.pool.release([b for _, b in order])
        self.pool.release(self.held)
        self.report.pages_written = len(self.needed)
        self.fresh, self.held = [], []

    def rollback(self) -> None:
        for blk in self.inserted:
            self.pool.evict(blk)
        self.pool.release(self.fresh)
        self.pool.release(self.held)
        self.fresh, self.held, self.inserted = [], [], []

    def _block_ids(self) -> torch.Tensor:
        return torch.tensor([b.block_id for b in self.fresh], dtype=torch.long, device=self.parts.kv_caches[0].device)

    def _in_engine_layout(self, layer_pages: torch.Tensor) -> torch.Tensor:
        """One layer's pages re-laid out for the engine where the snapshot's layout differs."""
        if self.snap.kv.layout == self.parts.layout:
            return layer_pages
        self.report.layout_converted = True
        return convert_pages(layer_pages, self.snap.kv.layout, self.parts.layout)


class HostPages(BlockPlacement):
    """KV in this process's memory: each layer's verified pages (read-only views of the
    mapped file, checked by `stage`) scattered into the blocks, one copy per run of pages."""

    pages: Optional[list[torch.Tensor]] = None

    def stage(self) -> None:
        self.pages = [layer.mapped() for layer in self.snap.kv.layers]

    def write(self) -> None:
        if self.needed:
            self.report.kv_from = "host"
            self.report.kv_bytes += scatter_pages(self.parts.kv_caches, [self._in_engine_layout(p) for p in self.pages],
                                                  self.needed, [b.block_id for b in self.fresh])

    def rollback(self) -> None:
        self.pages = None
        super().rollback()


class CudaPages(BlockPlacement):
    """KV on a GPU in this process: `stage` uploads the needed pages into one GPU staging
    buffer and checks every byte there, before `allocate` (which may evict cached blocks);
    `write` scatters them on the device. From `registered` (the snapshot file registered
    with CUDA, every page in the engine's layout: its KV sections as they are, checked
    against the file's chunk CRCs), else from verified host pages."""

    def __init__(self, *args: Any, registered: Optional[Any] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registered = registered
        self.staged: Optional[list[torch.Tensor]] = None

    def stage(self) -> None:
        if not self.needed:
            return
        from thaw.core.gpu import upload_checked

        expected, names, chunk_size = None, None, 4 << 20
        if self.registered is not None:
            reg = self.registered
            sections = [layer.section_name for layer in self.snap.kv.layers]
            host = [reg.section(n) for n in sections]
            for n in sections:
                reg.check_padding(n)
            secs = [reg.container.section(n) for n in sections]
            expected = [list(sec.chunk_crcs) for sec in secs]
            chunk_size = secs[0].chunk_size
            names = [f"section {n!r}" for n in sections]
            self.report.kv_from = "file"
        else:
            idx = torch.tensor(self.needed, dtype=torch.long)
            host = []
            for layer in self.snap.kv.layers:
                layer_pages = self._in_engine_layout(layer.mapped())
                pinned = torch.empty((len(self.needed), layer_pages.shape[1]), dtype=layer_pages.dtype,
                                     pin_memory=True)
                torch.index_select(layer_pages, 0, idx, out=pinned)
                host.append(pinned)
            self.report.kv_from = "host"
        total = sum(h.numel() * h.element_size() for h in host)
        staging = torch.empty(total, dtype=torch.uint8, device=self.parts.kv_caches[0].device)
        self.staged = upload_checked(host, staging, expected_crcs=expected, chunk_size=chunk_size, names=names)

    def write(self) -> None:
        if not self.needed:
            return
        from thaw.core.gpu import PagePlan, scatter_staged

        staged, self.staged = self.staged, None
        ids = self._block_ids()
        scatter_staged([PagePlan([t], ids) for t in self.parts.kv_caches], staged)
        self.report.kv_bytes += sum(v.numel() for v in staged)

    def rollback(self) -> None:
        self.staged = None
        super().rollback()


class DevicePages(BlockPlacement):
    """Every page of a prepared file, checked when it was kept in GPU memory: one kernel
    scatters them into the blocks, device to device."""

    def __init__(self, *args: Any, resident: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resident = resident

    def write(self) -> None:
        from thaw.core.gpu import PagePlan

        PagePlan(self.parts.kv_caches, self._block_ids()).scatter(self.resident)
        self.report.kv_bytes += self.resident.numel()
        self.report.kv_from = "device"


class WorkerPages(BlockPlacement):
    """KV in worker processes, in one round trip at `stage`: the worker maps the file's KV
    layers, checks every chunk and only then writes the pages into the blocks `allocate`
    will take (read from the free queue, which nothing else changes while a thaw call runs);
    those blocks are free, unreachable by a hash once taken. A refusal (a `ThawError`) writes
    nothing; any other failure drops those blocks' cached hashes."""

    placed: Optional[list[int]] = None  # the blocks `stage` filled

    def stage(self) -> None:
        if not self.needed:
            return
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
        self.placed = targets
        self.report.layout_converted = placed["layout_converted"]
        self.report.kv_bytes += placed["kv_bytes"]
        self.report.kv_from = "worker"

    def allocate(self) -> None:
        super().allocate()
        if self.placed is not None and [b.block_id for b in self.fresh] != self.placed:
            raise ThawError("internal: the KV blocks vLLM allocated are not the ones the worker filled; "
                            "their cached hashes were dropped and the restore undone")

    def write(self) -> None:
        self.placed = None  # filled in `stage`, taken by `allocate`

    def rollback(self) -> None:
        if self.placed is not None:  # filled but never taken: their cached hashes no longer hold
            self.pool.forget(self.placed)
            self.placed = None
        super().rollback()


def choose_placement(parts: EngineParts, snap: StateSnapshot, hashes: list[bytes], report: RestoreReport,
                     recorder: BlockTokenRecorder, *, reuse_cached: bool,
                     registry: Optional[Callable[[Any], Any]] = None,
                     resident_kv: Optional[Callable[[Any], Optional[torch.Tensor]]] = None) -> BlockPlacement:
    """The placement for where this engine's KV lives, and, on a GPU, where the pages come
    from: kept on the device (`resident_kv`: a prepared file), the CUDA-registered file
    (`registry`) when every page is written in the engine's layout and the file is in the
    page cache, else verified host pages. Only looks."""
    view = PoolView.look(parts, hashes, report, reuse_cached=reuse_cached)  # the pool, scanned once
    args = (parts, snap, hashes, report, recorder, view)
    if parts.workers is not None:
        return WorkerPages(*args)
    if not parts.on_cuda:
        return HostPages(*args)
    source = snap.source
    if registry is None or source is None or not source.is_local:
        return CudaPages(*args)
    # A local file mostly outside the page cache is read through the mapping, not registered
    # (registering it would fault it in a page at a time).
    resident = resident_fraction(source.path)
    if resident < COLD_BELOW:
        report.cold_file_resident = resident
        return CudaPages(*args)
    every_page = len(view.needed) == len(hashes)
    if not (every_page and snap.kv.layout == parts.layout and all(layer.section_name for layer in snap.kv.layers)):
        return CudaPages(*args)
    on_device = resident_kv(source) if resident_kv is not None else None
    if on_device is not None:
        return DevicePages(*args, resident=on_device)
    return CudaPages(*args, registered=registry(source))
