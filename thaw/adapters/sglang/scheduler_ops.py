"""Operations that run inside an SGLang scheduler process (reached through `plugin.thaw_call`).

Each op takes the `Scheduler` and JSON-able keyword arguments and returns a JSON-able
value. They run on the scheduler's thread between batches, so the radix cache, KV pool
and queues are quiescent while they work. The one place that knows SGLang's scheduler
attributes; the cache itself is translated by `capture` (capture) and `kv_placement`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from thaw.core.phase_clock import PhaseClock
from thaw.core import (CHECKPOINT_WEIGHTS, EngineUnsupported, Identity, PagedKV, StateSnapshot, TensorData,
                       save)
from thaw.core import weights_ref
from thaw.core.dtypes import dtype_name
from thaw.core.restore import run_restore
from thaw.core.snapshot_io import weights_digest

from thaw.core.checkpoint import NoCheckpoint, model_config_digest, model_config_for_digest, read_checkpoint
from . import kv_placement, capture, engine_access, gpu_pages, prepared
from .engine_access import kv_pool, live_requests, model_runner
from .requests import capture_requests
from .restore import SGLangRestore
from .scheduler_state import thaw_state


def _dummy(s: Any) -> bool:
    return str(s.server_args.load_format).lower() == "dummy"


def sglang_version() -> str:
    import sglang

    return sglang.__version__


def check_supported(s: Any) -> None:
    engine_access.internals()  # refuses a release outside the supported lines
    if s.server_args.tp_size != 1 or getattr(s.server_args, "pp_size", 1) != 1:
        raise EngineUnsupported("SGLang with tensor/pipeline parallelism is not supported (tp_size=1, pp_size=1)")
    pool = kv_pool(s)
    if not hasattr(pool, "k_buffer") or not hasattr(pool, "v_buffer"):
        raise EngineUnsupported(f"SGLang KV pool {type(pool).__name__} is not a K/V (MHA) pool")
    kv_dtype = str(getattr(s.server_args, "kv_cache_dtype", "auto"))
    if kv_dtype not in ("auto", str(s.model_config.dtype).replace("torch.", "")):
        raise EngineUnsupported(f"KV cache dtype {kv_dtype!r}: thaw captures unquantized KV caches only "
                                "(their scales are not captured); start SGLang with kv_cache_dtype='auto'")
    capture.check_supported(s.tree_cache)


def checkpoint_weights(s: Any) -> dict[str, torch.Tensor]:
    restored = thaw_state(s).weights.restored_tensors()
    if restored is not None:
        return restored
    return read_checkpoint(s.server_args.model_path, dummy=_dummy(s))


def current_weights_digest(s: Any) -> str:
    def compute() -> str:
        try:
            w = checkpoint_weights(s)
        except NoCheckpoint:  # dummy weights never restored: unknown (a corrupt file raises)
            return ""
        return weights_digest({k: TensorData.of(v) for k, v in w.items()})

    return thaw_state(s).weights.digest(CHECKPOINT_WEIGHTS, compute)


def engine_identity(s: Any) -> Identity:
    mc = s.model_config
    pool = kv_pool(s)
    layout = capture.kv_layout(pool, s.page_size)
    return Identity(
        model_architecture=(mc.hf_config.architectures or ["unknown"])[0],
        model_config_digest=model_config_digest(s.model_config.hf_config, s.server_args.model_path),
        weights_digest=current_weights_digest(s),
        dtype=dtype_name(mc.dtype),
        num_layers=len(pool.k_buffer),
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        page_size=s.page_size,
        kv_layout=layout.name,
        engine="sglang",
        engine_version=sglang_version(),
        tp_rank=model_runner(s).tp_rank,
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
    cap = capture.capture_tree(s.tree_cache, s.page_size)
    return {"free_slots": kv_placement.free_slots(s.tree_cache),
            "evictable_slots": kv_placement.evictable_slots(s.tree_cache),
            "tree_nodes": len(cap.tree.nodes), "tree_tokens": cap.tree.num_tokens,
            "requests": sorted(r.rid for r in live_requests(s)),
            "weights_digest": thaw_state(s).weights.digests.get(CHECKPOINT_WEIGHTS)}


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
            "requests_in_flight": len(cache["requests"]), "weights_inconsistent": thaw_state(s).weights.inconsistent}


def snapshot(s: Any, path: str, weights: bool = True, requests: bool = True,
             weights_from: Optional[str] = None, direct: bool = False,
             recycle: Optional[str] = None) -> dict[str, Any]:
    """The tree, its KV pages, the weights and (with `requests`) the live requests, written
    to `path` atomically; with `weights_from` (a snapshot file holding the engine's
    weights, checked first) the weights are referenced from there, not copied; `direct`:
    written past the page cache; `recycle`: a retired snapshot whose page-cache pages the
    new file overwrites (`write_container`)."""
    clock = PhaseClock()
    check_supported(s)
    thaw_state(s).weights.refuse_if_inconsistent()
    weights_from = weights_ref.reference_for_snapshot(
        weights_from, path, weights=weights, weights_format=CHECKPOINT_WEIGHTS,
        weights_digest=lambda: current_weights_digest(s))
    cap = capture.capture_tree(s.tree_cache, s.page_size)
    page_of = {pool_page: i for i, pool_page in enumerate(cap.pool_pages)}
    requests = capture_requests(s, page_of, cap.pool_pages) if requests else []
    pool = kv_pool(s)
    if gpu_pages.on_cuda(pool):  # written below, before the engine runs again: left on the device where it fits
        layers, kv_route = gpu_pages.gather(pool, cap.pool_pages, s.page_size, for_writer=True)
    else:
        layers, kv_route = capture.gather_pages(pool, cap.pool_pages, s.page_size), "host"
    snap = StateSnapshot(identity=engine_identity(s), prefix=cap.tree, requests=requests,
                         kv=PagedKV(capture.kv_layout(pool, s.page_size), [TensorData.in_place(t) for t in layers]))
    if weights_from is not None:
        snap.weights_from = weights_from
    elif weights:
        snap.weights = {k: TensorData.of(v) for k, v in checkpoint_weights(s).items()}
    snap.extras = {"sglang": {"tokens_skipped": cap.tokens_skipped}}
    clock.lap("capture")
    save(snap, path, timings=clock.seconds, direct=direct, recycle=recycle)
    return {"tree_nodes": len(cap.tree.nodes), "tree_tokens": cap.tree.num_tokens,
            "pages": len(cap.pool_pages), "requests": len(requests), "weights": len(snap.weights),
            "kv_bytes": snap.kv.nbytes, "kv_route": kv_route, "tokens_skipped": cap.tokens_skipped,
            "seconds": clock.seconds}


def restore(s: Any, path: str, weights: bool = True, requests: bool = True,
            trust_unknown_weights: bool = False) -> dict[str, Any]:
    """`thaw.core.restore.run_restore` with SGLang's hooks (`restore.SGLangRestore`).
    Returns the requests for the caller to resubmit (they resume from the restored KV)."""
    check_supported(s)
    files = thaw_state(s).files
    snap = files.opened(path)
    cold = prepared.cold_files(snap)  # before anything reads the files (a small one comes back whole)
    hooks = SGLangRestore(s, files, cold, engine_identity(s), capture.kv_layout(kv_pool(s), s.page_size))
    out = run_restore(hooks, snap, weights=weights, requests=requests, trust_unknown_weights=trust_unknown_weights)
    snap, placement = out.snap, hooks.placement
    return {"tree_nodes": len(snap.prefix.nodes) if snap.prefix else 0,
            "new_tokens": placement.new_tokens if placement is not None else 0,
            "weights_restored": out.weights_loaded, "weights_route": out.weights_route,
            "weights_bytes": sum(d.nbytes for d in snap.weights.values()) if out.weights_loaded else 0,
            "kv_bytes": snap.kv.nbytes if snap.kv else 0,
            "kv_from": placement.kv_from if placement is not None else None,
            "requests": out.resumed or [], "identity_differences": out.identity_differences,
            "recut": out.recut, "seconds": out.seconds}


def prepare(s: Any, path: str, kv_on_device: bool = False) -> dict[str, Any]:
    """Readies restores from `path` (`prepared.PreparedFiles.prepare`: opened, registered
    with CUDA, with `kv_on_device` its KV pages kept checked on the GPU)."""
    clock = PhaseClock()
    check_supported(s)
    pool = kv_pool(s)
    thaw_state(s).files.prepare(path, pool, capture.kv_layout(pool, s.page_size), kv_on_device)
    return {"seconds": clock.lap("prepare")}


def release_prepared(s: Any) -> None:
    """Frees what `prepare` and restores hold: CUDA registrations, KV pages on the GPU."""
    thaw_state(s).files.release()


OPS = {"hello": hello, "state": state, "model_config": model_config, "seed_rng": seed_rng,
       "progress": progress, "status": status, "snapshot": snapshot, "restore": restore,
       "prepare": prepare, "release_prepared": release_prepared}
