"""Operations that run inside an SGLang scheduler process (reached through `plugin.thaw_call`).

Each op takes the `Scheduler` and JSON-able keyword arguments and returns a JSON-able
value. They run on the scheduler's thread between batches, so the radix cache, KV pool
and queues are quiescent while they work. The one place that knows SGLang's scheduler
attributes; the cache itself is translated by `cache_state` (capture) and `cache_restore`.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Optional

import torch

from thaw.core import (CHECKPOINT_WEIGHTS, EngineUnsupported, Identity, IdentityMismatch, KVLayout,
                       PagedKV, PrefixTree, StateSnapshot, TensorData, ThawError, check_kv_weights,
                       check_weights_format, config_digest, convert_pages, save)
from thaw.core import weights_ref
from thaw.core.errors import WeightsInconsistent
from thaw.core.weights_swap import failed_partway, refuse_requests_on_old_weights
from thaw.core.dtypes import dtype_name
from thaw.core.prefix import ROOT
from thaw.core.recut import fit_for_restore
from thaw.core.snapshot_io import weights_digest

from ..checkpoint import NoCheckpoint, model_config_for_digest, read_checkpoint
from . import cache_restore, cache_state, engine_access, gpu_pages, gpu_weights, prepared
from .requests import capture_requests, live_requests
from .rpc import SchedulerBusy

MATCH_FIELDS = ("model_architecture", "model_config_digest", "dtype", "num_layers",
                "num_kv_heads", "head_dim", "page_size", "tp_size", "extra.quantization")
def _state(s: Any) -> SimpleNamespace:
    """thaw's own per-scheduler state: weights restored from a snapshot, their digest."""
    if not hasattr(s, "_thaw_state"):
        s._thaw_state = SimpleNamespace(restored_weights=None, weights_digest=None, weights_inconsistent=None)
    return s._thaw_state


def _kv_pool(s: Any) -> Any:
    return s.token_to_kv_pool_allocator.get_kvcache()


def _dummy(s: Any) -> bool:
    return str(s.server_args.load_format).lower() == "dummy"


def sglang_version() -> str:
    import sglang

    return sglang.__version__


def check_supported(s: Any) -> None:
    engine_access.internals()  # refuses a release outside the supported lines
    if s.server_args.tp_size != 1 or getattr(s.server_args, "pp_size", 1) != 1:
        raise EngineUnsupported("SGLang with tensor/pipeline parallelism is not supported (tp_size=1, pp_size=1)")
    pool = _kv_pool(s)
    if not hasattr(pool, "k_buffer") or not hasattr(pool, "v_buffer"):
        raise EngineUnsupported(f"SGLang KV pool {type(pool).__name__} is not a K/V (MHA) pool")
    kv_dtype = str(getattr(s.server_args, "kv_cache_dtype", "auto"))
    if kv_dtype not in ("auto", str(s.model_config.dtype).replace("torch.", "")):
        raise EngineUnsupported(f"KV cache dtype {kv_dtype!r}: thaw captures unquantized KV caches only "
                                "(their scales are not captured); start SGLang with kv_cache_dtype='auto'")
    cache_state.check_supported(s.tree_cache)


def checkpoint_weights(s: Any) -> dict[str, torch.Tensor]:
    st = _state(s)
    if st.restored_weights is not None:
        return {name: data.tensor() for name, data in st.restored_weights.items()}
    return read_checkpoint(s.server_args.model_path, dummy=_dummy(s))


def current_weights_digest(s: Any) -> str:
    st = _state(s)
    if st.weights_digest is None:
        try:
            w = checkpoint_weights(s)
        except NoCheckpoint:  # dummy weights never restored: unknown (a corrupt file raises)
            return ""
        st.weights_digest = weights_digest({k: TensorData.of(v) for k, v in w.items()})
    return st.weights_digest


def engine_identity(s: Any) -> Identity:
    mc = s.model_config
    pool = _kv_pool(s)
    layout = cache_state.kv_layout(pool, s.page_size)
    return Identity(
        model_architecture=(mc.hf_config.architectures or ["unknown"])[0],
        model_config_digest=config_digest(model_config(s)),
        weights_digest=current_weights_digest(s),
        dtype=dtype_name(mc.dtype),
        num_layers=len(pool.k_buffer),
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        page_size=s.page_size,
        kv_layout=layout.name,
        engine="sglang",
        engine_version=sglang_version(),
        tp_rank=s.tp_worker.model_runner.tp_rank,
        tp_size=s.server_args.tp_size,
        extra={"load_format": str(s.server_args.load_format), "context_len": mc.context_len,
               "quantization": s.server_args.quantization,  # None: unquantized weights
               "tree_cache": type(s.tree_cache).__name__},
    )


# -- ops ----------------------------------------------------------------------------------
def hello(s: Any) -> dict[str, Any]:
    check_supported(s)
    return {"identity": engine_identity(s).to_json()}


def model_config(s: Any) -> dict[str, Any]:
    """The model config the identity's digest is computed from."""
    return model_config_for_digest(s.model_config.hf_config, s.server_args.model_path)


def state(s: Any) -> dict[str, Any]:
    """What a refused restore must leave unchanged."""
    cap = cache_state.capture_tree(s.tree_cache, s.page_size)
    return {"free_slots": cache_restore.free_slots(s.tree_cache),
            "evictable_slots": cache_restore.evictable_slots(s.tree_cache),
            "tree_nodes": len(cap.tree.nodes), "tree_tokens": cap.tree.num_tokens,
            "requests": sorted(r.rid for r in live_requests(s)),
            "weights_digest": _state(s).weights_digest}


def seed_rng(s: Any, seed: int) -> None:
    """Seeds the scheduler's torch RNG, which SGLang samples from unless it runs with
    deterministic inference (only then does it honour a request's `sampling_seed`)."""
    torch.manual_seed(seed)


def progress(s: Any) -> dict[str, int]:
    """Output tokens produced so far by each live request."""
    return {r.rid: len(r.output_ids) for r in live_requests(s)}


def status(s: Any) -> dict[str, Any]:
    """What a server's GET /thaw/status answers: the engine, its identity, its cache."""
    check_supported(s)
    cache = state(s)
    return {"engine": "sglang", "identity": engine_identity(s).to_json(), "page_size": s.page_size,
            **{k: cache[k] for k in ("tree_nodes", "tree_tokens", "free_slots", "evictable_slots")},
            "requests_in_flight": len(cache["requests"]), "weights_inconsistent": _state(s).weights_inconsistent}


def snapshot(s: Any, path: str, weights: bool = True, requests: bool = True,
             weights_from: Optional[str] = None, direct: bool = False,
             recycle: Optional[str] = None) -> dict[str, Any]:
    """The tree, its KV pages, the weights and (with `requests`) the live requests, written
    to `path` atomically; with `weights_from` (a snapshot file holding the engine's
    weights, checked first) the weights are referenced from there, not copied; `direct`:
    written past the page cache; `recycle`: a retired snapshot whose page-cache pages the
    new file overwrites (`write_container`)."""
    t0 = time.perf_counter()
    check_supported(s)
    if _state(s).weights_inconsistent:
        raise WeightsInconsistent(_state(s).weights_inconsistent)
    if weights_from is not None:
        if not weights:
            raise ThawError("weights=False leaves the weights out; weights_from references them: pass one")
        weights_ref.check_target(weights_from, current_weights_digest(s), CHECKPOINT_WEIGHTS, path)
    cap = cache_state.capture_tree(s.tree_cache, s.page_size)
    page_of = {pool_page: i for i, pool_page in enumerate(cap.pool_pages)}
    requests = capture_requests(s, page_of, cap.pool_pages) if requests else []
    pool = _kv_pool(s)
    if gpu_pages.on_cuda(pool):  # written below, before the engine runs again: left on the device where it fits
        layers, kv_route = gpu_pages.gather(pool, cap.pool_pages, s.page_size, for_writer=True)
    else:
        layers, kv_route = cache_state.gather_pages(pool, cap.pool_pages, s.page_size), "host"
    snap = StateSnapshot(identity=engine_identity(s), prefix=cap.tree, requests=requests,
                         kv=PagedKV(cache_state.kv_layout(pool, s.page_size), [TensorData.in_place(t) for t in layers]))
    if weights_from is not None:
        snap.weights_from = weights_from
    elif weights:
        snap.weights = {k: TensorData.of(v) for k, v in checkpoint_weights(s).items()}
    snap.extras = {"sglang": {"tokens_skipped": cap.tokens_skipped}}
    t1 = time.perf_counter()
    save(snap, path, direct=direct, recycle=recycle)
    return {"tree_nodes": len(cap.tree.nodes), "tree_tokens": cap.tree.num_tokens,
            "pages": len(cap.pool_pages), "requests": len(requests), "weights": len(snap.weights),
            "kv_bytes": snap.kv.nbytes, "kv_route": kv_route, "tokens_skipped": cap.tokens_skipped,
            "seconds": {"capture": t1 - t0, "write": time.perf_counter() - t1}}


def _tree_with_requests(snap: StateSnapshot) -> PrefixTree:
    """The snapshot's tree plus, for each request holding KV, a node for the part of its
    computed tokens the tree does not already hold, under the deepest node it extends."""
    tree = PrefixTree(snap.prefix.page_size, list(snap.prefix.nodes))
    for req in snap.requests:
        if not req.num_computed_tokens:
            continue
        tokens = (list(req.prompt_token_ids) + list(req.output_token_ids))[: req.num_computed_tokens]
        namespace = req.extra.get("namespace")
        matched, node = tree.match_node(tokens, namespace)
        if matched < len(tokens):
            own = namespace if node == ROOT or tree.key_of(node) != namespace else None
            tree.add(node, tokens[matched:], req.pages[matched // tree.page_size:], own)
    return tree


def _check_fits(s: Any, snap: StateSnapshot, mine: Identity, layout: Any, load_weights: bool,
                resume: bool, trust_unknown_weights: bool) -> None:
    """What `fit_for_restore` does not check: weights, layout shape, request ids."""
    if load_weights:
        check_weights_format(snap, (CHECKPOINT_WEIGHTS,))  # SGLang loads checkpoint tensors only
    else:
        check_kv_weights(snap.identity.weights_digest, mine.weights_digest,
                         trust_unknown=trust_unknown_weights)
    if snap.kv is not None and not snap.kv.layout.same_shape(layout):
        raise IdentityMismatch("kv layout", snap.kv.layout.to_json(), layout.to_json())
    if resume:
        live = {r.rid for r in live_requests(s)}
        clash = [r.request_id for r in snap.requests if r.request_id in live]
        if clash:
            raise ThawError(f"requests {clash} are already live in this engine")
        for req in snap.requests:  # resubmitted through Engine.async_generate, after the restore
            extra, _ = cache_state.decode_namespace(req.extra.get("namespace"))
            if extra is not None:
                raise EngineUnsupported(f"request {req.request_id!r} carries SGLang extra key {extra!r}, "
                                        "which Engine.generate cannot resubmit; restore with requests=False")


def restore(s: Any, path: str, weights: bool = True, requests: bool = True,
            trust_unknown_weights: bool = False) -> dict[str, Any]:
    """Checks, reads and verifies everything, then loads weights and inserts the tree.
    Returns the requests for the caller to resubmit (they resume from the restored KV)."""
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name], clock[0] = now - clock[0], now

    check_supported(s)
    files = prepared.of(s)
    snap = files.opened(path)
    cold = prepared.cold_files(snap)  # before anything reads the files (a small one comes back whole)
    load_weights = weights and bool(snap.weights)
    mine = engine_identity(s)
    layout = cache_state.kv_layout(_kv_pool(s), s.page_size)
    # Another engine's (or page size's) snapshot is re-cut to this engine's pages.
    snap, recut_report, differences = fit_for_restore(snap, mine, layout, MATCH_FIELDS)
    _check_fits(s, snap, mine, layout, load_weights, requests, trust_unknown_weights)
    inconsistent = _state(s).weights_inconsistent
    if inconsistent and not load_weights:
        raise WeightsInconsistent(f"{inconsistent}; this restore brings no weights")
    if load_weights:  # every cached prefix was computed with the weights being replaced
        _refuse_live_requests(s)
    tree: Optional[PrefixTree] = None
    if snap.prefix is not None and snap.kv is not None:
        tree = _tree_with_requests(snap) if requests else snap.prefix
        cache_restore.check_room(s.tree_cache, tree, reuse_cached=not load_weights)
    lap("checks")
    kv_from, pool, placement = None, _kv_pool(s), None
    try:
        if tree is not None:
            # Fresh slots first (nothing names them until the commit), so each KV layer can
            # be written into them as it arrives; any failure below gives them back.
            placement = cache_restore.reserve_tree(s.tree_cache, pool, tree, snap.kv.num_pages,
                                                   reuse_cached=not load_weights)
            lap("kv_reserve")
            kv_from = _write_kv(files, snap, layout, pool, placement, cold)
        lap("kv")
        named, weights_route = [], None
        if load_weights:  # staged on the GPU where it can hold them (gpu_weights), else read on the host
            named, weights_route = gpu_weights.stage(snap, pool.k_buffer[0].device, files.registered, cold)
            lap("weights_stage")
        if named:
            _swap_weights(s, named)
            st = _state(s)
            st.restored_weights, st.weights_digest = dict(snap.weights), snap.identity.weights_digest
        lap("weights")
        new_tokens = placement.commit() if placement is not None else 0
    finally:
        if placement is not None:
            placement.release()  # no-op once committed
    return {"tree_nodes": len(snap.prefix.nodes) if snap.prefix else 0,
            "new_tokens": new_tokens, "weights_restored": len(named), "weights_route": weights_route,
            "weights_bytes": sum(d.nbytes for d in snap.weights.values()) if load_weights else 0,
            "kv_bytes": snap.kv.nbytes if snap.kv else 0, "kv_from": kv_from,
            "requests": [r.to_json() for r in snap.requests] if requests else [],
            "identity_differences": differences,
            "recut": recut_report.to_json() if recut_report else None, "seconds": seconds}


def _write_kv(files: prepared.PreparedFiles, snap: StateSnapshot, layout: KVLayout, pool: Any,
              placement: cache_restore.TreePlacement, cold_files: dict[str, bool]) -> str:
    """The snapshot's KV written into the placement's slots; returns where it came from.
    Raises ChecksumError (the slots are the caller's to give back) on a bad chunk."""
    # (a file on this machine: one read from object storage is checked on the host)
    from_file = gpu_pages.file_pages_fit(snap, layout, pool) and snap.kv.layers[0]._container.is_local
    held_in = snap.kv.layers[0]._container if from_file else None
    kept = files.resident_pages(held_in) if from_file else None
    if kept is not None:
        placement.write(kept)  # checked when `prepare(kv_on_device=True)` uploaded them
        return "device, checked when prepared"
    # Registering a file mostly outside the page cache would read all of it, weights too,
    # a page at a time: its KV is then read through the mapping and its weights streamed.
    cold = from_file and cold_files.get(held_in.path, False)
    if from_file and not cold:
        # A CUDA pool: each layer uploaded from the page cache through the kept staging
        # ring, checked on the GPU and written into the slots on the stream its check ran
        # on, while later layers upload.
        reg = files.registered(held_in)
        ring = files.staging_ring(reg, gpu_pages.kv_sections(snap), pool.k_buffer[0].device)
        gpu_pages.write_checked_pages(snap, reg, ring, placement.write_layer)
        return "file, checked on the GPU"
    # Verified read-only views of the file where it is mapped (no copy when the layout is
    # the engine's), copied into the slots.
    placement.write([convert_pages(layer.mapped(), snap.kv.layout, layout) for layer in snap.kv.layers])
    return "host, checked there" + (" (the file is mostly outside the page cache)" if cold else "")


def prepare(s: Any, path: str, kv_on_device: bool = False) -> dict[str, Any]:
    """Readies restores from `path` (`prepared.PreparedFiles.prepare`: opened, registered
    with CUDA, with `kv_on_device` its KV pages kept checked on the GPU)."""
    t0 = time.perf_counter()
    check_supported(s)
    pool = _kv_pool(s)
    prepared.of(s).prepare(path, pool, cache_state.kv_layout(pool, s.page_size), kv_on_device)
    return {"seconds": time.perf_counter() - t0}


def release_prepared(s: Any) -> None:
    """Frees what `prepare` and restores hold: CUDA registrations, KV pages on the GPU."""
    prepared.of(s).release()


def _refuse_live_requests(s: Any) -> None:
    """Refuses a restore that replaces the weights while requests run on them; while the
    scheduler still holds requests that have answered (they lock their prefixes and insert
    their KV into the tree when retired), `SchedulerBusy`, which the caller asks again."""
    refuse_requests_on_old_weights([r.rid for r in live_requests(s)])
    retiring = len(s.running_batch.reqs)
    if retiring or int(s.tree_cache.protected_size()):
        raise SchedulerBusy(f"SGLang's scheduler is still retiring {retiring} requests that have answered "
                            f"({int(s.tree_cache.protected_size())} cached slots locked)")


def _swap_weights(s: Any, named: list[tuple[str, torch.Tensor]]) -> None:
    """Loads the snapshot's weights through SGLang's own tensor weight-update path
    (`load_weights` of the model), then evicts every cached prefix (computed with the old
    weights; the restore's own paths are inserted after). A load that fails or is refused
    evicts them as well and leaves the engine `WeightsInconsistent` until a restore with
    weights succeeds."""
    st = _state(s)
    try:
        ok, message = engine_access.update_weights_from_tensor(s.tp_worker.model_runner, named)
        if not ok:
            raise ThawError(f"SGLang refused the snapshot's weights: {message}")
    except BaseException as exc:
        cache_restore.drop_cached(s.tree_cache)
        st.restored_weights, st.weights_digest = None, ""
        error = failed_partway(exc, "radix cache")
        st.weights_inconsistent = str(error)
        raise error from exc
    cache_restore.drop_cached(s.tree_cache)
    st.weights_inconsistent = None


OPS = {"hello": hello, "state": state, "model_config": model_config, "seed_rng": seed_rng,
       "progress": progress, "status": status, "snapshot": snapshot, "restore": restore,
       "prepare": prepare, "release_prepared": release_prepared}
