"""thaw's side of a vLLM worker: the `thaw_worker_call` method, and the host KV copies.

Where vLLM runs the model in worker processes (its multiprocess executor: every
multiprocess engine on the CPU backend, tensor parallel engines on GPUs), the KV tensors
and weights live there, not in the EngineCore: each worker holds its tensor-parallel
rank's KV heads, writes its own rank file (`thaw.core.tp_files`) and, on restore, reads
its heads from the snapshot's ranks, re-sharded where the sizes differ (`thaw.core.tp`). thaw's vLLM plugin adds `thaw_worker_call`
to vLLM's `WorkerWrapperBase`; the core side (`engine_access.RemoteWorkers`) reaches it with
the executor's `collective_rpc`. KV bytes and weights move between the worker's memory and
the snapshot file here: only block ids, page lists and small JSON cross processes.

Contract: each op takes and returns JSON-able values and keeps what a restore stages in
this process until `commit_weights` uses it or `release` drops it; a
`ThawError` (or a missing file) comes back as an error reply, never as an exception
through vLLM's RPC.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from thaw.core.phase_clock import PhaseClock
from thaw.core import StateSnapshot, ThawError, TensorData, convert_pages, save
from thaw.core.errors import error_reply
from thaw.core.object_store import stored_size
from thaw.core.tp import check_ranks, rank_kv
from thaw.core.tp_files import SET_KEY, load_ranks, rank_file_name, set_of_file, source_key
from thaw.core.kv_layout import KVLayout
from thaw.core.prefault import populate_for_write
from thaw.core.schema import Identity, PagedKV, RequestState

from .engine_access import thaw_state, worker_kv_caches, worker_reload_weights, worker_tp_rank
from .pages import runs


def gather_pages(kv_caches: list[torch.Tensor], block_ids: list[int], page_elems: int) -> list[torch.Tensor]:
    """[num_pages, page_elems] host copies of the listed blocks, one tensor per layer."""
    ids = torch.tensor(block_ids, dtype=torch.long, device=kv_caches[0].device)
    return [kv.index_select(0, ids).reshape(len(block_ids), page_elems).cpu() for kv in kv_caches]


def scatter_pages(kv_caches: list[torch.Tensor], layers: list[torch.Tensor], needed: list[int],
                  block_ids: list[int]) -> int:
    """Writes snapshot pages `needed` of each layer ([pages, page_elems], engine layout) into
    `block_ids`, one copy per run of consecutive pages, straight from the source (host
    pages into a GPU engine: each run copied to the device first); returns bytes."""
    ids = torch.tensor(block_ids, dtype=torch.long, device=kv_caches[0].device)
    moved = 0
    for layer_pages, kv in zip(layers, kv_caches):
        block_shape = tuple(kv.shape[1:])
        for (first, count), at in runs(needed):
            run = layer_pages[first:first + count].reshape((count,) + block_shape)
            kv.index_copy_(0, ids[at:at + count], run.to(kv.device))
        moved += len(needed) * layer_pages.shape[1] * layer_pages.element_size()
    return moved


def prefix_to_json(tree: Any) -> dict[str, Any]:
    return {"page_size": tree.page_size,
            "nodes": [[n.parent, n.tokens, n.pages, n.extra_key] for n in tree.nodes]}


def prefix_from_json(obj: dict[str, Any]) -> Any:
    from thaw.core import PrefixTree

    tree = PrefixTree(obj["page_size"])
    for parent, tokens, pages, key in obj["nodes"]:
        tree.add(parent, tokens, pages, key)
    return tree


class _WorkerSide:
    """What one worker process holds for thaw between calls."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.layout: KVLayout | None = None
        self.staged_weights: list[tuple[str, torch.Tensor]] | None = None
        self._opened: tuple[tuple, list[StateSnapshot]] | None = None
        self.rank, self.size = worker_tp_rank(worker)

    def _open(self, path: str) -> list[StateSnapshot]:
        """The ranks of the snapshot the file `path` belongs to (`set_of_file`), opened and
        checked once while they are the same files (a restore stages its KV and its weights
        from one opening; every read is still CRC-checked)."""
        key = source_key(set_of_file(path))
        if self._opened is None or self._opened[0] != key:
            ranks = load_ranks(set_of_file(path))
            if len(ranks) > 1:
                check_ranks(ranks)
            self._opened = (key, ranks)
        return self._opened[1]

    @property
    def kv_caches(self) -> list[torch.Tensor]:
        return worker_kv_caches(self.worker)

    def describe(self) -> dict[str, Any]:
        from .engine_access import kv_layout

        kv = self.kv_caches
        out: dict[str, Any] = {"num_layers": len(kv), "on_cuda": bool(kv and kv[0].is_cuda),
                               "layout": None, "problem": "", "rank": [self.rank, self.size]}
        try:
            self.layout = kv_layout(self.worker, kv[0])
            out["layout"] = self.layout.to_json()
        except ThawError as exc:
            out["problem"] = str(exc)
        return out

    def prefault(self) -> list[str]:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in self.kv_caches}
        return sorted({populate_for_write(s) for s in storages.values()})

    def save(self, path: str, meta: dict[str, Any], block_ids: list[int], weights: dict[str, Any],
             set_id: Optional[str] = None, direct: bool = False, recycle: Optional[str] = None) -> dict:
        """Writes this rank's part of a snapshot: the file `path` at tensor parallel size 1,
        else this rank's file in the directory `path` (marked with the set's `set_id`).
        Weights (checkpoint format, the same on every rank) go into rank 0's file only, or
        its reference to them (`weights={"from": path}`). `direct`: written past the page
        cache; `recycle`: a retired snapshot whose pages the file overwrites (`write_container`)."""
        clock = PhaseClock()
        layout = KVLayout.from_json(meta["layout"])
        tensors: dict[str, torch.Tensor] = {}
        if self.rank == 0 and weights.get("checkpoint_of"):
            from thaw.core.checkpoint import read_checkpoint

            tensors = read_checkpoint(weights["checkpoint_of"], dummy=False)
        elif self.rank == 0 and weights.get("snapshot"):
            tensors = {k: d.tensor() for k, d in self._open(weights["snapshot"])[0].weights.items()}
        weights_from = weights.get("from") if self.rank == 0 else None  # referenced, not copied
        layers = gather_pages(self.kv_caches, block_ids, layout.page_elems)
        identity = Identity.from_json(meta["identity"])
        identity.tp_rank = self.rank
        extras = dict(meta["extras"])
        if self.size > 1:
            path = os.path.join(path, rank_file_name(self.rank, self.size))
            extras[SET_KEY] = {"id": set_id}
        snap = StateSnapshot(identity=identity,
                             weights={k: TensorData.of(v) for k, v in tensors.items()},
                             weights_format=meta["weights_format"],
                             kv=PagedKV(layout, [TensorData.of(t) for t in layers]),
                             prefix=prefix_from_json(meta["prefix"]),
                             requests=[RequestState.from_json(r) for r in meta["requests"]],
                             extras=extras, weights_from=weights_from)
        clock.lap("capture")
        save(snap, path, timings=clock.seconds, direct=direct, recycle=recycle)
        return {"kv_bytes": sum(t.numel() * t.element_size() for t in layers), "file_bytes": stored_size(path),
                "seconds": clock.seconds}

    def place_kv(self, path: str, needed: list[int], block_ids: list[int]) -> dict:
        """Writes this rank's KV heads of snapshot pages `needed` into `block_ids`. The pages
        are read from the snapshot `path` belongs to (its own rank file mapped where the
        sizes agree, else cut from every rank's pages) and every chunk's CRC is checked
        before the first block is written; a refusal raises before any write."""
        if len(block_ids) != len(needed):
            raise ThawError(f"internal: {len(needed)} pages to place into {len(block_ids)} blocks")
        ranks = self._open(path)
        layout, layers = rank_kv(ranks, self.size, self.rank)
        converted = layout != self.layout
        if converted:
            layers = [convert_pages(t, layout, self.layout) for t in layers]
        return {"layout_converted": converted, "resharded": len(ranks) != self.size,
                "kv_bytes": scatter_pages(self.kv_caches, layers, needed, block_ids)}

    def stage_weights(self, path: str) -> dict:
        """Reads the checkpoint weights (rank 0's file holds them) for `commit_weights`,
        which hands them to vLLM's loader: it cuts this rank's shard itself."""
        snap = self._open(path)[0]
        self.staged_weights = [(name, d.tensor()) for name, d in snap.weights.items()]  # each chunk checked
        return {"weights": len(self.staged_weights)}

    def commit_weights(self) -> dict:
        if self.staged_weights is None:
            raise ThawError("internal: no weights were staged in this worker")
        weights, self.staged_weights = self.staged_weights, None
        worker_reload_weights(self.worker, weights)
        return {"weights": len(weights)}

    def release(self) -> dict:
        self.staged_weights = None
        return {}


OPS = ("describe", "prefault", "save", "place_kv", "stage_weights", "commit_weights", "release")


def thaw_worker_call(wrapper: Any, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs one op in this worker (see the module docstring); `wrapper` is vLLM's
    WorkerWrapperBase, whose `.worker` holds the model runner."""
    try:
        if op not in OPS:
            raise ThawError(f"unknown thaw worker operation {op!r}; known: {list(OPS)}")
        side = thaw_state.kept(wrapper, thaw_state.WORKER_SIDE, lambda: _WorkerSide(wrapper.worker))
        if side.layout is None and op not in ("describe", "prefault"):
            side.describe()
        return {"ok": True, "result": getattr(side, op)(**args)}
    except (ThawError, OSError) as exc:
        return error_reply(exc)


def install() -> None:
    """Adds `thaw_worker_call` to vLLM's WorkerWrapperBase class (idempotent)."""
    from .engine_access import add_worker_method

    add_worker_method("thaw_worker_call", thaw_worker_call)
