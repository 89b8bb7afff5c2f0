"""Hydrates a vLLM engine from a StateSnapshot.

Order of work: every check first (identity, layout, capacity, request ids) so a refusal
leaves the engine untouched; then the weights and KV pages are read and CRC-checked (on a
CUDA engine the KV pages are uploaded to a staging buffer and checked there) — all before
the first change; then blocks are allocated (the first change: it may evict cached
blocks), KV pages go into those fresh blocks the engine cannot reach yet, weights are
loaded, and only then are the pages' hashes registered (anything placed is undone on
failure); last, in-flight requests are re-queued.

A restore that loads weights replaces what every cached block was computed with: it is
refused while requests run (by name), writes every snapshot page afresh (none is taken
from the cache), and drops every other cached block from the prefix index once the new
weights are in. If loading the weights fails partway, the cache is dropped too and the
error is `WeightsInconsistent`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from thaw.core import (EngineUnsupported, Identity, IdentityMismatch, RequestState, SchemaError, StateSnapshot,
                       ThawError, check_kv_weights)
from thaw.core.weights_swap import failed_partway, refuse_requests_on_old_weights

from thaw.core.recut import fit_for_restore
from thaw.core.residency import COLD_BELOW, resident_fraction

from .engine_access import (NO_FRONT, EngineParts, PoolEdit, block_hasher, engine_block_hashes, external_request_id,
                            in_flight_requests, request_rejections)
from .recorder import BlockTokenRecorder
from .kv_placement import KVPlacement, RestoreReport
from .weights import WeightsLoad

# Identity fields that must agree before anything is touched.
MATCH_FIELDS = ("model_architecture", "model_config_digest", "dtype", "num_layers",
                "num_kv_heads", "head_dim", "page_size", "tp_size", "extra.quantization")


def _salt(extra_key: Optional[str], node: int) -> Optional[str]:
    if extra_key is None:
        return None
    if extra_key.startswith("cache_salt:"):
        return extra_key[len("cache_salt:"):]
    raise EngineUnsupported(f"prefix node {node}: extra key {extra_key!r} has no vLLM equivalent here")


def derive_hashes(parts: EngineParts, snap: StateSnapshot) -> list[bytes]:
    """The target engine's own block hash for every snapshot page (same order as pages)."""
    tree = snap.prefix
    bs = tree.page_size
    hash_block = block_hasher(parts)
    page_hash: dict[int, bytes] = {}
    last_hash: dict[int, bytes] = {}
    for i, node in enumerate(tree.nodes):
        parent = last_hash.get(node.parent) if node.parent >= 0 else None
        salt = _salt(tree.key_of(i), i) if node.parent < 0 else None
        for k, page in enumerate(node.pages):
            extra = (("cache_salt", salt),) if salt and k == 0 and node.parent < 0 else None
            parent = hash_block(parent, node.tokens[k * bs:(k + 1) * bs], extra)
            page_hash[page] = parent
        last_hash[i] = parent
    return [page_hash[p] for p in range(len(page_hash))]


def check_hasher_agrees(parts: EngineParts, snap: StateSnapshot, hashes: list[bytes]) -> None:
    """Guards against silent zero hits: our derivation must equal the engine's own hasher."""
    for leaf in snap.prefix.leaves()[:1]:
        tokens, pages = snap.prefix.path(leaf)
        engine = engine_block_hashes(parts, tokens, _salt(snap.prefix.key_of(leaf), leaf))[:len(pages)]
        if engine != [hashes[p] for p in pages]:
            raise EngineUnsupported("this vLLM derives block hashes differently from thaw's "
                                    "derivation; refusing a restore that would never be hit")


def check_fits(parts: EngineParts, snap: StateSnapshot, has_weights: bool,
               engine_weights_digest: Callable[[str], str], trust_unknown_weights: bool = False,
               resume: bool = True) -> None:
    """What `fit_for_restore` does not check: weights (without weights, the engine's own
    digest in the snapshot's weight format must be known and match), layout shape, and,
    when requests are resumed, that the engine can take them and their ids are free."""
    if not has_weights:
        check_kv_weights(snap.identity.weights_digest, engine_weights_digest(snap.weights_format),
                         trust_unknown=trust_unknown_weights)
    if snap.kv is not None and not snap.kv.layout.same_shape(parts.layout):
        raise IdentityMismatch("kv layout", snap.kv.layout.to_json(), parts.layout.to_json())
    if not resume or not snap.requests:
        return
    if parts.front is None:
        raise EngineUnsupported(f"the snapshot holds {len(snap.requests)} in-flight requests and {NO_FRONT}; "
                                "restore with requests=False to leave them out")
    clash = [r.request_id for r in snap.requests if r.request_id in parts.front.live_ids()]
    if clash:
        raise ThawError(f"requests {clash} are already running in this engine")


def prepare_requests(requests: list[RequestState]) -> list[tuple[str, dict[str, Any], Any, list[int]]]:
    """(id, prompt, SamplingParams, output so far) for each in-flight request, built before
    anything changes: a request vLLM would not accept is refused here, by name."""
    from vllm import SamplingParams

    out = []
    for req in requests:
        sampling = dict(req.sampling)
        produced = len(req.output_token_ids)
        try:
            sampling["max_tokens"] = max(1, sampling["max_tokens"] - produced)
            sampling["min_tokens"] = max(0, sampling.get("min_tokens", 0) - produced)
            params = SamplingParams(**sampling)
        except request_rejections() as exc:
            raise SchemaError(f"request {req.request_id!r}: sampling settings vLLM does not accept "
                              f"({type(exc).__name__}: {exc})") from None
        prompt: dict[str, Any] = {"prompt_token_ids": list(req.prompt_token_ids) + list(req.output_token_ids)}
        if req.extra.get("cache_salt"):
            prompt["cache_salt"] = req.extra["cache_salt"]
        out.append((req.request_id, prompt, params, list(req.output_token_ids)))
    return out


def resume_requests(parts: EngineParts, prepared: list[tuple[str, dict[str, Any], Any, list[int]]],
                    report: RestoreReport) -> dict[str, list[int]]:
    """Re-queues in-flight requests (their KV prefix is found in the restored cache). If one
    is refused, those already queued are aborted before the error propagates."""
    done: dict[str, list[int]] = {}
    try:
        for request_id, prompt, params, output in prepared:
            parts.front.add_request(request_id, prompt, params)
            done[request_id] = output
    except BaseException:
        if done:
            parts.front.abort(list(done))
        raise
    report.requests_resumed.extend(done)
    return done


def refuse_running_requests(parts: EngineParts) -> None:
    """Refuses a restore that replaces the weights while requests run on them (their KV,
    and the tokens still to come, belong to the weights they started with)."""
    refuse_requests_on_old_weights([external_request_id(parts, r.request_id) for r in in_flight_requests(parts)])


def commit_weights(parts: EngineParts, weights: WeightsLoad) -> int:
    """Loads the staged weights, then drops every block the prefix index held (computed with
    the old weights; this restore's own pages are registered after). A load that fails
    partway drops them as well and raises `WeightsInconsistent`."""
    pool = PoolEdit(parts.block_pool, [])
    try:
        loaded = weights.commit()
    except BaseException as exc:
        pool.drop_cached()
        raise failed_partway(exc, "prefix cache") from exc
    pool.drop_cached()
    return loaded


def restore(parts: EngineParts, snap: StateSnapshot, recorder: BlockTokenRecorder, *,
            engine_id: Identity, engine_weights_digest: Callable[[str], str], load_weights: bool, resume: bool,
            trust_unknown_weights: bool = False,
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
    # Model and dtype first: a snapshot of another model is refused as that, before any
    # question about this engine's KV layout (which raises if thaw does not know it).
    snap.identity.check_matches(engine_id, tuple(f for f in MATCH_FIELDS if f != "page_size"))
    # Another engine's (or block size's) snapshot is re-cut to this engine's blocks.
    snap, recut_report, report.identity_differences = fit_for_restore(snap, engine_id, parts.layout,
                                                                      MATCH_FIELDS)
    if recut_report is not None:
        report.recut = recut_report.to_json()
        report.pages_in_snapshot = snap.kv.num_pages
    check_fits(parts, snap, has_weights, engine_weights_digest, trust_unknown_weights, resume)
    if has_weights:
        refuse_running_requests(parts)
    hashes = derive_hashes(parts, snap) if snap.prefix is not None and snap.prefix.nodes else []
    if hashes:
        check_hasher_agrees(parts, snap, hashes)
    placement = KVPlacement(parts, snap, hashes, report, reuse_cached=not has_weights) if hashes else None
    prepared = prepare_requests(snap.requests) if resume else []
    # A local file mostly outside the page cache is read from the disk, not mapped (mapping
    # or registering it would fault it in a page at a time); a registered file is resident.
    # The weights decide for the file they are held in (WeightsLoad), the KV pages here.
    local = snap.source is not None and snap.source.is_local and registry is not None and parts.on_cuda
    resident = resident_fraction(snap.source.path) if local and parts.workers is None else 1.0
    cold = resident < COLD_BELOW
    if cold:
        report.cold_file_resident = resident
    weights = WeightsLoad(parts, snap, registry) if has_weights else None
    if weights is not None:
        report.weights_format, report.weights_route, report.weights_bytes = (
            snap.weights_format, weights.route, weights.bytes)
    lap("checks")
    # Every byte is CRC-checked before the engine can use it: weights and CPU-bound KV here,
    # KV uploaded to a GPU as it lands there (before its scatter), all before any hash is
    # registered or any weight replaced.
    direct = (placement is not None and registry is not None and parts.on_cuda
              and placement.every_page and snap.kv.layout == parts.layout
              and all(layer._section for layer in snap.kv.layers) and snap.source is not None
              and snap.source.is_local and not cold)  # a cached file the GPU can map (not at a URL)
    in_core = placement is not None and not direct and parts.workers is None  # else the worker reads them
    pages = [layer.mapped() for layer in snap.kv.layers] if in_core else None
    on_device = resident_kv(snap.source) if direct and resident_kv is not None else None
    try:
        if weights is not None:
            weights.stage()
        lap("read_and_verify")
        if placement is not None and on_device is None:
            placement.stage(pages, registry(snap.source) if direct else None)
        lap("kv_stage")  # CUDA: KV uploaded to GPU memory and checked there
    except BaseException:
        if weights is not None:
            weights.release()
        if placement is not None:
            placement.unstage()
        raise
    if placement is not None:
        placement.allocate()  # the first change to the engine (it may evict cached blocks)
    try:
        if placement is not None:
            placement.move(pages, on_device)
        lap("kv")
        if weights is not None:
            report.weights_restored = commit_weights(parts, weights)
        lap("weights")
        if placement is not None:
            placement.register(recorder)
        resumed = resume_requests(parts, prepared, report)
    except BaseException:
        if weights is not None:
            weights.release()
        if placement is not None:
            placement.rollback()
        raise
    lap("requests")
    return report, resumed
