"""Hydrates a vLLM engine from a StateSnapshot.

Order of work: every check first (identity, layout, capacity, request ids) so a refusal
leaves the engine untouched; then the weights and KV pages are read and CRC-checked; then
KV pages go into fresh blocks the engine cannot reach yet, weights are loaded, and only
then are the pages' hashes registered (anything placed is undone on failure); last,
in-flight requests are re-queued.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from thaw.core import (EngineUnsupported, Identity, IdentityMismatch, RequestState,
                       StateSnapshot, ThawError, convert_pages)

from thaw.core.recut import fit_for_restore

from .engine_access import EngineParts
from .recorder import BlockTokenRecorder
from .pages import page_depths, page_index, page_parents, page_record, runs
from .weights import WeightsLoad

# Identity fields that must agree before anything is touched.
MATCH_FIELDS = ("model_architecture", "model_config_digest", "dtype", "num_layers",
                "num_kv_heads", "head_dim", "page_size", "tp_size")


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
    kv_from: Optional[str] = None  # "file" (registered, uploaded), "host", or "device" (prepared)
    seconds: dict[str, float] = field(default_factory=dict)  # checks, weights, kv, requests

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _salt(extra_key: Optional[str], node: int) -> Optional[str]:
    if extra_key is None:
        return None
    if extra_key.startswith("cache_salt:"):
        return extra_key[len("cache_salt:"):]
    raise EngineUnsupported(f"prefix node {node}: extra key {extra_key!r} has no vLLM equivalent here")


def derive_hashes(parts: EngineParts, snap: StateSnapshot) -> list[bytes]:
    """The target engine's own block hash for every snapshot page (same order as pages)."""
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import hash_block_tokens

    tree = snap.prefix
    bs = tree.page_size
    fn = get_hash_fn_by_name(parts.core.vllm_config.cache_config.prefix_caching_hash_algo)
    page_hash: dict[int, bytes] = {}
    last_hash: dict[int, bytes] = {}
    for i, node in enumerate(tree.nodes):
        parent = last_hash.get(node.parent) if node.parent >= 0 else None
        salt = _salt(tree.key_of(i), i) if node.parent < 0 else None
        for k, page in enumerate(node.pages):
            extra = (("cache_salt", salt),) if salt and k == 0 and node.parent < 0 else None
            parent = hash_block_tokens(fn, parent, node.tokens[k * bs:(k + 1) * bs], extra)
            page_hash[page] = bytes(parent)
        last_hash[i] = parent
    return [page_hash[p] for p in range(len(page_hash))]


def check_hasher_agrees(parts: EngineParts, snap: StateSnapshot, hashes: list[bytes]) -> None:
    """Guards against silent zero hits: our derivation must equal the engine's own hasher."""
    from vllm import SamplingParams
    from vllm.v1.request import Request

    for leaf in snap.prefix.leaves()[:1]:
        tokens, pages = snap.prefix.path(leaf)
        salt = snap.prefix.key_of(leaf)
        req = Request("thaw-hash-check", tokens, SamplingParams(max_tokens=1), None,
                      cache_salt=_salt(salt, leaf), block_hasher=parts.core.request_block_hasher)
        engine = [bytes(h) for h in req.block_hashes[:len(pages)]]
        if engine != [hashes[p] for p in pages]:
            raise EngineUnsupported("this vLLM derives block hashes differently from thaw's "
                                    "derivation; refusing a restore that would never be hit")


def check_fits(parts: EngineParts, snap: StateSnapshot, has_weights: bool,
               engine_weights_digest: Callable[[str], str]) -> None:
    """What `fit_for_restore` does not check: weights (without weights, the engine's own
    digest in the snapshot's weight format must match), layout shape, request ids."""
    if not has_weights:
        mine = engine_weights_digest(snap.weights_format)
        if snap.identity.weights_digest != mine:
            raise IdentityMismatch("weights_digest", snap.identity.weights_digest or "(none)",
                                   mine or "(dummy or unknown weights)")
    if snap.kv is not None and not snap.kv.layout.same_shape(parts.layout):
        raise IdentityMismatch("kv layout", snap.kv.layout.to_json(), parts.layout.to_json())
    live = set(parts.llm.llm_engine.output_processor.request_states)
    live |= {s.external_req_id for s in parts.llm.llm_engine.output_processor.request_states.values()}
    clash = [r.request_id for r in snap.requests if r.request_id in live]
    if clash:
        raise ThawError(f"requests {clash} are already running in this engine")


class KVPlacement:
    """Puts snapshot pages into fresh engine blocks, then registers their hashes.

    Construction only looks (pages the engine already caches, capacity) and raises before
    anything changes. `allocate` + `move` fill blocks the engine cannot reach yet (no
    hash); `register` makes them prefix-cache hits; `rollback` undoes whatever was done.
    """

    def __init__(self, parts: EngineParts, snap: StateSnapshot, hashes: list[bytes],
                 report: RestoreReport) -> None:
        from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

        self.parts, self.snap, self.hashes, self.report = parts, snap, hashes, report
        self.keys = [make_block_hash_with_group_id(h, 0) for h in hashes]
        bp = parts.block_pool
        existing = {}
        for page, key in enumerate(self.keys):
            blk = bp.cached_block_hash_to_block.get_one_block(key)
            if blk is not None:
                existing[page] = blk
        self.held = list(existing.values())
        self.needed = [p for p in range(len(hashes)) if p not in existing]
        report.pages_already_cached = len(existing)
        free = bp.get_num_free_blocks() - sum(1 for b in self.held if b.ref_cnt == 0)
        if len(self.needed) > free:
            raise ThawError(f"the engine has {bp.get_num_free_blocks()} free KV blocks; the snapshot "
                            f"needs {len(self.needed)} more (pages not already cached)")
        self.fresh: list = []
        self.inserted: list = []

    @property
    def every_page(self) -> bool:
        return len(self.needed) == len(self.hashes)

    def allocate(self) -> None:
        bp = self.parts.block_pool
        bp.touch(self.held)  # keep hit blocks from being evicted while allocating
        self.fresh = bp.get_new_blocks(len(self.needed)) if self.needed else []

    def move(self, pages: Optional[list[torch.Tensor]], registered: Optional[Any] = None,
             resident: Optional[torch.Tensor] = None) -> None:
        """Writes the needed pages. `pages`: verified [num_pages, page_elems] CPU layers; or,
        for CUDA engines, `registered`: the snapshot file registered with CUDA, whose KV
        sections are uploaded as they are and checked on the GPU before their scatter; or
        `resident`: every layer's pages of that file, already checked, in device memory."""
        if not self.needed:
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
            self._move_cuda(ids, pages, registered)
            self.report.kv_from = "file" if registered is not None else "host"
            return
        self.report.kv_from = "host"
        page_runs = runs(self.needed)
        for layer_pages, kv in zip(pages, self.parts.kv_caches):
            layer_pages = self._in_engine_layout(layer_pages)
            block_shape = tuple(kv.shape[1:])
            # One scatter per run of consecutive snapshot pages, straight from the (mapped)
            # source: no intermediate copy.
            for (first, count), at in page_runs:
                src = layer_pages[first:first + count].reshape((count,) + block_shape)
                kv.index_copy_(0, ids[at:at + count], src)
            self.report.kv_bytes += len(self.needed) * layer_pages.shape[1] * layer_pages.element_size()

    def _in_engine_layout(self, layer_pages: torch.Tensor) -> torch.Tensor:
        """One layer's pages re-laid out for the engine where the snapshot's layout differs."""
        if self.snap.kv.layout == self.parts.layout:
            return layer_pages
        self.report.layout_converted = True
        return convert_pages(layer_pages, self.snap.kv.layout, self.parts.layout)

    def _move_cuda(self, ids: torch.Tensor, pages: Optional[list[torch.Tensor]], registered: Optional[Any]) -> None:
        from thaw.core.gpu import upload_and_scatter

        layers = self.parts.kv_caches
        page_bytes = self.parts.layout.page_bytes
        expected = None
        if registered is not None:  # every page, same layout: upload the file's bytes as they are
            names = [layer._section for layer in self.snap.kv.layers]
            host = [registered.section(n) for n in names]
            secs = [registered.container.section(n) for n in names]
            expected = [list(sec.chunk_crcs) for sec in secs]
            chunk_size = secs[0].chunk_size
        else:
            idx = torch.tensor(self.needed, dtype=torch.long)
            host = []
            for layer_pages in pages:
                layer_pages = self._in_engine_layout(layer_pages)
                pinned = torch.empty((len(self.needed), layer_pages.shape[1]), dtype=layer_pages.dtype,
                                     pin_memory=True)
                torch.index_select(layer_pages, 0, idx, out=pinned)
                host.append(pinned)
            chunk_size = 4 << 20
        staging = torch.empty(len(layers) * len(self.needed) * page_bytes, dtype=torch.uint8, device=ids.device)
        upload_and_scatter(layers, ids, host, staging, expected_crcs=expected, chunk_size=chunk_size,
                           names=[f"section {n!r}" for n in names] if registered is not None else None)
        self.report.kv_bytes += staging.numel()

    def register(self, recorder: BlockTokenRecorder) -> None:
        bp, snap, hashes = self.parts.block_pool, self.snap, self.hashes
        parents = page_parents(snap)
        depth = page_depths(snap)
        index = page_index(snap)
        for page, blk in zip(self.needed, self.fresh):
            bp._insert_block_hash(self.keys[page], blk, num_tokens=(depth[page] + 1) * self.parts.block_size)
            self.inserted.append(blk)
            parent = parents[page]
            recorder.add(hashes[page], page_record(snap, index, page,
                                                    hashes[parent] if parent is not None else None))
        # Deepest pages first: they are evicted before their parents, as vLLM itself orders it.
        order = sorted(zip(self.needed, self.fresh), key=lambda pb: -depth[pb[0]])
        bp.free_blocks([b for _, b in order])
        bp.free_blocks(self.held)
        self.report.pages_written = len(self.needed)
        self.fresh, self.held = [], []

    def rollback(self) -> None:
        bp = self.parts.block_pool
        for blk in self.inserted:
            bp._maybe_evict_cached_block(blk)
        bp.free_blocks(self.fresh)
        bp.free_blocks(self.held)
        self.fresh, self.held, self.inserted = [], [], []


def resume_requests(parts: EngineParts, requests: list[RequestState], report: RestoreReport) -> dict[str, list[int]]:
    """Re-queues in-flight requests; their KV prefix is found in the restored cache."""
    from vllm import SamplingParams

    done: dict[str, list[int]] = {}
    for req in requests:
        sampling = dict(req.sampling)
        produced = len(req.output_token_ids)
        sampling["max_tokens"] = max(1, sampling["max_tokens"] - produced)
        sampling["min_tokens"] = max(0, sampling.get("min_tokens", 0) - produced)
        prompt: dict[str, Any] = {"prompt_token_ids": list(req.prompt_token_ids) + list(req.output_token_ids)}
        if req.extra.get("cache_salt"):
            prompt["cache_salt"] = req.extra["cache_salt"]
        parts.llm.llm_engine.add_request(req.request_id, prompt, SamplingParams(**sampling))
        done[req.request_id] = list(req.output_token_ids)
        report.requests_resumed.append(req.request_id)
    return done


def restore(parts: EngineParts, snap: StateSnapshot, recorder: BlockTokenRecorder, *,
            engine_id: Identity, engine_weights_digest: Callable[[str], str], load_weights: bool, resume: bool,
            registry: Optional[Callable[[Any], Any]] = None,
            resident_kv: Optional[Callable[[Any], Optional[torch.Tensor]]] = None,
            ) -> tuple[RestoreReport, dict[str, list[int]]]:
    report = RestoreReport(pages_in_snapshot=snap.kv.num_pages if snap.kv else 0)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report.seconds[name] = now - clock
        clock = now

    has_weights = load_weights and bool(snap.weights)
    # Another engine's (or block size's) snapshot is re-cut to this engine's blocks.
    snap, recut_report, report.identity_differences = fit_for_restore(snap, engine_id, parts.layout,
                                                                      MATCH_FIELDS)
    if recut_report is not None:
        report.recut = recut_report.to_json()
        report.pages_in_snapshot = snap.kv.num_pages
    check_fits(parts, snap, has_weights, engine_weights_digest)
    hashes = derive_hashes(parts, snap) if snap.prefix is not None and snap.prefix.nodes else []
    if hashes:
        check_hasher_agrees(parts, snap, hashes)
    placement = KVPlacement(parts, snap, hashes, report) if hashes else None
    weights = WeightsLoad(parts, snap, registry) if has_weights else None
    if weights is not None:
        report.weights_format, report.weights_route, report.weights_bytes = (
            snap.weights_format, weights.route, weights.bytes)
    lap("checks")
    # Every byte is CRC-checked before the engine can use it: weights and CPU-bound KV here,
    # KV uploaded to a GPU as it lands there (before its scatter), all before any hash is
    # registered or any weight replaced.
    direct = (placement is not None and registry is not None and parts.kv_caches[0].is_cuda
              and placement.every_page and snap.kv.layout == parts.layout
              and all(layer._section for layer in snap.kv.layers) and snap.source is not None)
    pages = ([layer.mapped() for layer in snap.kv.layers] if placement is not None and not direct else None)
    if weights is not None:
        try:
            weights.stage()
        except BaseException:
            weights.release()
            raise
    lap("read_and_verify")
    if placement is not None:
        placement.allocate()
    try:
        if placement is not None:
            resident = resident_kv(snap.source) if direct and resident_kv is not None else None
            placement.move(pages, registry(snap.source) if direct and resident is None else None, resident)
        lap("kv")
        if weights is not None:
            report.weights_restored = weights.commit()
        lap("weights")
        if placement is not None:
            placement.register(recorder)
    except BaseException:
        if weights is not None:
            weights.release()
        if placement is not None:
            placement.rollback()
        raise
    resumed = resume_requests(parts, snap.requests, report) if resume else {}
    lap("requests")
    return report, resumed
