"""Tensor-parallel snapshots: KV heads re-sharded between sizes, without an engine.

An engine at tensor parallel size N keeps on rank r the KV heads
[r*H/N, (r+1)*H/N) of every layer (H the model's KV heads), for the same blocks, under the
same prefix tree. Its snapshot is one rank file per rank (`tp_files`). Weights in
checkpoint format do not depend on the rank and travel in rank 0's file; engine-specific
weight formats (sharded parameters) are refused here.

`merge_ranks` joins ranks into one TP=1 snapshot, `split_heads` cuts one into N ranks,
`reshard` is the two together, and `rank_kv` gives one rank's pages at another size (what
an engine rank reads on restore): every K and V element arrives bit for bit.
`view_at` re-states a snapshot's identity and layout at another size for the checks an
engine makes before it reads anything.
"""

from __future__ import annotations

import copy
import uuid

from .errors import SchemaError
from .kv_layout import KVLayout
from .layouts import NAMED_LAYOUTS, named_layout
from .schema import CHECKPOINT_WEIGHTS, PagedKV, StateSnapshot
from .snapshot_io import weights_digest
from .tensor_data import TensorData
from .tp_files import SET_KEY


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


def _heads_per_rank(heads: int, size: int) -> int:
    if size < 1 or heads % size:
        raise SchemaError(f"{heads} KV heads cannot be split evenly over {size} ranks (engines that "
                          "replicate KV heads when TP exceeds them are not supported)")
    return heads // size


def split_heads(snap: StateSnapshot, size: int) -> list[StateSnapshot]:
    """`size` rank snapshots of a TP=1 snapshot: rank r holds heads [r*H/size, (r+1)*H/size)."""
    if snap.identity.tp_size != 1:
        raise SchemaError(f"split_heads takes a TP=1 snapshot; this one is rank {snap.identity.tp_rank} "
                          f"of {snap.identity.tp_size} (merge its ranks first)")
    if snap.kv is None:
        raise SchemaError("the snapshot holds no KV pages to shard")
    _check_weights(snap)
    src = snap.kv.layout
    per_rank = _heads_per_rank(src.num_kv_heads, size)
    dst = _rank_layout(src, per_rank)
    identity = snap.identity
    if snap.weights and not identity.weights_digest:  # every rank names the weights rank 0 holds
        identity = copy.deepcopy(identity)
        identity.weights_digest = weights_digest(snap.weights)
    planes = [src.planes(layer.tensor().contiguous()) for layer in snap.kv.layers]
    set_id = uuid.uuid4().hex
    out = []
    for rank in range(size):
        h = slice(rank * per_rank, (rank + 1) * per_rank)
        part = _with_kv(snap, identity, dst, [(k[:, :, h], v[:, :, h]) for k, v in planes],
                        rank, size, weights=rank == 0)
        part.extras[SET_KEY] = {"id": set_id}
        out.append(part)
    return out


def check_ranks(ranks: list[StateSnapshot]) -> None:
    """Refuses rank snapshots that are not every rank, in order, of one take: rank and size
    in each identity, one set id, one prefix tree, layout and identity (but the rank's)."""
    if not ranks:
        raise SchemaError("a snapshot needs at least one rank")
    size, first = len(ranks), ranks[0]
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
                ("set id", snap.extras.get(SET_KEY), first.extras.get(SET_KEY)),
                ("prefix tree", _tree_key(snap), _tree_key(first)),
                ("layout", snap.kv.layout.to_json(), first.kv.layout.to_json()),
                ("identity", _identity_key(snap), _identity_key(first))):
            if mine != theirs:
                raise SchemaError(f"rank {r}: its {what} differs from rank 0's; these are not ranks of one snapshot")


def _whole_planes(ranks: list[StateSnapshot], layer: int) -> tuple:
    """K and V [N, P, H, D] of one layer with every rank's heads, in rank order."""
    import torch

    parts = [snap.kv.layout.planes(snap.kv.layers[layer].tensor().contiguous()) for snap in ranks]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)


def merge_ranks(ranks: list[StateSnapshot]) -> StateSnapshot:
    """One TP=1 snapshot from every rank of a TP=N one (in rank order, heads concatenated)."""
    check_ranks(ranks)
    first = ranks[0]
    src = first.kv.layout
    dst = _rank_layout(src, src.num_kv_heads * len(ranks))
    planes = [_whole_planes(ranks, i) for i in range(len(first.kv.layers))]
    merged = _with_kv(first, first.identity, dst, planes, 0, 1, weights=True)
    merged.extras.pop(SET_KEY, None)
    return merged


def reshard(ranks: list[StateSnapshot], size: int) -> list[StateSnapshot]:
    """The ranks of a TP=len(ranks) snapshot as the ranks of a TP=`size` one."""
    whole = merge_ranks(ranks) if len(ranks) > 1 or ranks[0].identity.tp_size != 1 else ranks[0]
    return [whole] if size == 1 else split_heads(whole, size)


def view_at(ranks: list[StateSnapshot], size: int) -> StateSnapshot:
    """Rank 0 of `ranks` (every rank of one take, as `check_ranks` accepts them) re-stated
    for an engine at tensor parallel size `size`: identity (KV heads per rank, rank 0 of
    `size`) and KV layout as `rank_kv` delivers them; the tree, requests and weights are
    rank 0's. Its KV layers are rank 0's file sections (the right page count, not the heads
    the layout names): for checks and page counts only; each engine rank reads its pages
    with `rank_kv`."""
    first = ranks[0]
    if len(ranks) == size:
        return first
    per_rank = _heads_per_rank(first.identity.num_kv_heads * len(ranks), size)
    view = copy.copy(first)
    view.identity = copy.deepcopy(first.identity)
    view.identity.num_kv_heads, view.identity.tp_rank, view.identity.tp_size = per_rank, 0, size
    if first.kv is not None:
        target = _rank_layout(first.kv.layout, per_rank)
        view.identity.kv_layout = target.name
        view.kv = PagedKV(target, list(first.kv.layers))
    return view


def rank_kv(ranks: list[StateSnapshot], size: int, rank: int) -> tuple[KVLayout, list]:
    """The KV pages rank `rank` of an engine at size `size` holds, from `ranks` (every rank
    of one take, as `check_ranks` accepts them): (layout, one [pages, page_elems] tensor per
    layer), each chunk CRC-checked as it is read. The file's own pages where the sizes
    agree, else the rank's heads cut from every rank's."""
    if len(ranks) == size:
        kv = ranks[rank].kv
        return kv.layout, [layer.mapped() for layer in kv.layers]
    import torch

    src = ranks[0].kv.layout
    per_rank = _heads_per_rank(src.num_kv_heads * len(ranks), size)
    dst = _rank_layout(src, per_rank)
    h = slice(rank * per_rank, (rank + 1) * per_rank)
    layers = []
    for i in range(len(ranks[0].kv.layers)):
        k, v = _whole_planes(ranks, i)
        pages = torch.empty((k.shape[0], dst.page_elems), dtype=k.dtype)
        dst.write_planes(pages, k[:, :, h], v[:, :, h])
        layers.append(pages)
    return dst, layers


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
