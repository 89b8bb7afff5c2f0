"""Tensor-parallel snapshots: one file per rank, and KV heads re-sharded between sizes.

An engine at tensor parallel size N keeps on rank r the KV heads
[r*H/N, (r+1)*H/N) of every layer (H the model's KV heads), for the same blocks, under the
same prefix tree. Its snapshot is a directory of N files named by `rank_file_name`, each a
complete single-rank snapshot whose identity names its rank and size and whose KV layout
holds its H/N heads. Weights in checkpoint format do not depend on the rank and travel in
rank 0's file; engine-specific weight formats (sharded parameters) are refused here.

`merge_ranks` joins ranks into one TP=1 snapshot, `split_heads` cuts one into N ranks, and
`reshard` is the two together: every K and V element arrives bit for bit. Everything here
runs without an engine.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Union

from .errors import SchemaError
from .kv_layout import KVLayout
from .layouts import NAMED_LAYOUTS, named_layout
from .schema import CHECKPOINT_WEIGHTS, PagedKV, StateSnapshot
from .snapshot_io import load, save, weights_digest
from .tensor_data import TensorData

RANK_FILE = re.compile(r"rank-(\d{5})-of-(\d{5})\.thaw")


def rank_file_name(rank: int, size: int) -> str:
    return f"rank-{rank:05d}-of-{size:05d}.thaw"


def rank_files(directory: Union[str, os.PathLike]) -> list[Path]:
    """The rank files of a tensor-parallel snapshot directory, by rank; refuses a directory
    whose files do not name one size and every rank of it exactly once."""
    found = {}
    for entry in Path(directory).iterdir():
        m = RANK_FILE.fullmatch(entry.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = entry
    sizes = {size for _, size in found}
    if len(sizes) != 1:
        raise SchemaError(f"{directory}: expected the rank files of one tensor-parallel size, found sizes "
                          f"{sorted(sizes) or 'none'}")
    size = sizes.pop()
    missing = [r for r in range(size) if (r, size) not in found]
    if missing:
        raise SchemaError(f"{directory}: ranks {missing} of {size} are missing")
    return [found[(r, size)] for r in range(size)]


def load_ranks(source: Union[str, os.PathLike]) -> list[StateSnapshot]:
    """The ranks of a snapshot: a directory of rank files, or one file (a single rank)."""
    if Path(source).is_dir():
        return [load(path, verify=False) for path in rank_files(source)]
    return [load(source, verify=False)]


def save_ranks(ranks: list[StateSnapshot], target: Union[str, os.PathLike]) -> list[Path]:
    """Writes one rank as the file `target`, several as rank files in the directory `target`
    (created if missing; rank files of another size already there are refused)."""
    target = Path(target)
    if len(ranks) == 1:
        save(ranks[0], target)
        return [target]
    target.mkdir(exist_ok=True)
    stale = [e.name for e in target.iterdir() if RANK_FILE.fullmatch(e.name)
             and int(RANK_FILE.fullmatch(e.name).group(2)) != len(ranks)]
    if stale:
        raise SchemaError(f"{target} already holds rank files of another size: {sorted(stale)[:4]}")
    paths = [target / rank_file_name(r, len(ranks)) for r in range(len(ranks))]
    for snap, path in zip(ranks, paths):
        save(snap, path)
    return paths


def _rank_layout(layout: KVLayout, heads: int) -> KVLayout:
    """`layout`'s family for `heads` heads: the named layout where the name rebuilds the
    given one exactly, else token-major thaw.nhd (any adapter converts it on restore)."""
    if layout.name in NAMED_LAYOUTS:
        same = named_layout(layout.name, layout.page_size, layout.num_kv_heads, layout.head_dim, layout.dtype)
        if same == layout:
            return named_layout(layout.name, layout.page_size, heads, layout.head_dim, layout.dtype)
    return named_layout("thaw.nhd", layout.page_size, heads, layout.head_dim, layout.dtype)


def _check_weights(snap: StateSnapshot) -> None:
    if snap.weights and snap.weights_format != CHECKPOINT_WEIGHTS:
        raise SchemaError(f"weights in format {snap.weights_format!r} are sharded by the engine; only "
                          f"{CHECKPOINT_WEIGHTS!r} weights can be re-sharded (snapshot them in that format, "
                          "or leave the weights out)")


def split_heads(snap: StateSnapshot, size: int) -> list[StateSnapshot]:
    """`size` rank snapshots of a TP=1 snapshot: rank r holds heads [r*H/size, (r+1)*H/size)."""
    if snap.identity.tp_size != 1:
        raise SchemaError(f"split_heads takes a TP=1 snapshot; this one is rank {snap.identity.tp_rank} "
                          f"of {snap.identity.tp_size} (merge its ranks first)")
    if snap.kv is None:
        raise SchemaError("the snapshot holds no KV pages to shard")
    _check_weights(snap)
    src = snap.kv.layout
    heads = src.num_kv_heads
    if size < 1 or heads % size:
        raise SchemaError(f"{heads} KV heads cannot be split evenly over {size} ranks (engines that "
                          "replicate KV heads when TP exceeds them are not supported)")
    dst = _rank_layout(src, heads // size)
    identity = snap.identity
    if snap.weights and not identity.weights_digest:  # every rank names the weights rank 0 holds
        identity = copy.deepcopy(identity)
        identity.weights_digest = weights_digest(snap.weights)
    planes = [src.planes(layer.tensor().contiguous()) for layer in snap.kv.layers]
    out = []
    for rank in range(size):
        h0, h1 = rank * heads // size, (rank + 1) * heads // size
        out.append(_with_kv(snap, identity, dst, [(k[:, :, h0:h1], v[:, :, h0:h1]) for k, v in planes],
                            rank, size, weights=rank == 0))
    return out


def merge_ranks(ranks: list[StateSnapshot]) -> StateSnapshot:
    """One TP=1 snapshot from every rank of a TP=N one (in rank order, heads concatenated)."""
    import torch

    if not ranks:
        raise SchemaError("merge_ranks needs at least one rank")
    size = len(ranks)
    first = ranks[0]
    for r, snap in enumerate(ranks):
        if (snap.identity.tp_rank, snap.identity.tp_size) != (r, size):
            raise SchemaError(f"rank file {r}: its identity says rank {snap.identity.tp_rank} of "
                              f"{snap.identity.tp_size}, expected {r} of {size}")
        if snap.kv is None or snap.prefix is None:
            raise SchemaError(f"rank {r}: holds no KV pages and prefix tree")
        _check_weights(snap)
        if r and snap.weights:
            raise SchemaError(f"rank {r}: holds weights; checkpoint weights travel in rank 0's file only")
        for what, mine, theirs in (
                ("prefix tree", _tree_key(snap), _tree_key(first)),
                ("layout", snap.kv.layout.to_json(), first.kv.layout.to_json()),
                ("identity", _identity_key(snap), _identity_key(first))):
            if mine != theirs:
                raise SchemaError(f"rank {r}: its {what} differs from rank 0's; these are not ranks of one snapshot")
    src = first.kv.layout
    dst = _rank_layout(src, src.num_kv_heads * size)
    planes = []
    for i in range(len(first.kv.layers)):
        parts = [snap.kv.layout.planes(snap.kv.layers[i].tensor().contiguous()) for snap in ranks]
        planes.append((torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)))
    return _with_kv(first, first.identity, dst, planes, 0, 1, weights=True)


def reshard(ranks: list[StateSnapshot], size: int) -> list[StateSnapshot]:
    """The ranks of a TP=len(ranks) snapshot as the ranks of a TP=`size` one."""
    whole = merge_ranks(ranks) if len(ranks) > 1 or ranks[0].identity.tp_size != 1 else ranks[0]
    return [whole] if size == 1 else split_heads(whole, size)


def _with_kv(base: StateSnapshot, identity, layout: KVLayout, planes: list, rank: int, size: int, *,
             weights: bool) -> StateSnapshot:
    """`base` (its tree, requests, extras; its weights if `weights`) with `identity` for
    rank `rank` of `size` and KV pages in `layout` holding K and V [N, P, H, D] of each layer."""
    import torch

    layers = []
    for k, v in planes:
        pages = torch.empty((k.shape[0], layout.page_elems), dtype=k.dtype)
        layout.write_planes(pages, k, v)
        layers.append(TensorData.of(pages))
    snap = StateSnapshot(identity=copy.deepcopy(identity), weights=dict(base.weights) if weights else {},
                         weights_format=base.weights_format, kv=PagedKV(layout, layers),
                         prefix=copy.deepcopy(base.prefix), requests=copy.deepcopy(base.requests),
                         extras=copy.deepcopy(base.extras), extra_tensors=dict(base.extra_tensors))
    snap.identity.num_kv_heads, snap.identity.tp_rank, snap.identity.tp_size = layout.num_kv_heads, rank, size
    snap.identity.kv_layout = layout.name
    snap.validate()
    return snap


def _tree_key(snap: StateSnapshot) -> tuple:
    return (snap.prefix.page_size, [(n.parent, n.tokens, n.pages, n.extra_key) for n in snap.prefix.nodes],
            snap.kv.num_pages, len(snap.kv.layers))


def _identity_key(snap: StateSnapshot) -> dict:
    out = snap.identity.to_json()
    for rank_field in ("tp_rank", "weights_digest"):
        out.pop(rank_field)
    return out
