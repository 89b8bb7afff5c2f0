"""Re-cutting a snapshot's prefix tree and KV pages for another page size and layout.

This is how a snapshot moves between engines that page differently (vLLM blocks of 16 or
32 tokens, SGLang pages of 1): every root-to-leaf token path is cut into whole target
pages, pages with equal tokens under the same parent and namespace are shared, unbranched
runs become one node, and each target page's K and V rows are copied element by element
from the source pages that held those tokens (bit-identical). Tokens after a path's last
whole target page cannot be expressed and are dropped, and counted. In-flight requests
carry engine-specific sampling settings and are dropped, and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

from .errors import SchemaError
from .kv_layout import KVLayout
from .prefix import ROOT, PrefixTree
from .schema import Identity, PagedKV, StateSnapshot
from .tensor_data import TensorData


@dataclass
class RecutReport:
    source_page_size: int
    target_page_size: int
    source_layout: str
    target_layout: str
    source_tokens: int
    target_tokens: int
    leaf_tokens_dropped: int  # after the last whole target page of each leaf path
    requests_dropped: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recut(snap: StateSnapshot, layout: KVLayout) -> tuple[StateSnapshot, RecutReport]:
    """A snapshot whose tree and KV pages are cut to `layout.page_size` in `layout`."""
    if snap.kv is None or snap.prefix is None:
        raise SchemaError("recut: the snapshot has no KV pages and prefix tree")
    src = snap.kv.layout
    if (src.num_kv_heads, src.head_dim, src.dtype) != (layout.num_kv_heads, layout.head_dim, layout.dtype):
        raise SchemaError(
            f"recut: source pages are {src.num_kv_heads} heads x {src.head_dim} ({src.dtype}), "
            f"target layout {layout.name!r} needs {layout.num_kv_heads} x {layout.head_dim} ({layout.dtype})")
    tree, rows, dropped = _recut_tree(snap.prefix, layout.page_size)
    layers = [TensorData.of(_gather_rows(layer.tensor(), src, rows, layout)) for layer in snap.kv.layers]
    out = StateSnapshot(
        identity=replace(snap.identity, page_size=layout.page_size, kv_layout=layout.name,
                         extra={**snap.identity.extra, "recut_from": {
                             "page_size": src.page_size, "kv_layout": src.name}}),
        weights=snap.weights, weights_format=snap.weights_format, kv=PagedKV(layout, layers), prefix=tree, requests=[],
        extras=snap.extras, extra_tensors=snap.extra_tensors, source=snap.source)
    out.validate()
    return out, RecutReport(src.page_size, layout.page_size, src.name, layout.name,
                            snap.prefix.num_tokens, tree.num_tokens, dropped, len(snap.requests))


def fit_page_size(snap: StateSnapshot, layout: KVLayout) -> tuple[StateSnapshot, "RecutReport | None"]:
    """`snap` as is when its pages are `layout.page_size` tokens, else re-cut into `layout`."""
    if snap.kv is None or snap.prefix is None or snap.kv.layout.page_size == layout.page_size:
        return snap, None
    return recut(snap, layout)


def fit_for_restore(snap: StateSnapshot, engine: Identity, layout: "KVLayout | Callable[[], KVLayout]",
                    fields: tuple[str, ...]) -> tuple[StateSnapshot, "RecutReport | None", dict[str, Any]]:
    """The restore-side identity check around a re-cut. Refuses (IdentityMismatch) on any of
    `fields` that no re-cut can fix before a page is read (and before `layout`, when given
    as a callable, is asked: an engine's layout may itself be refused), re-cuts to
    `layout.page_size` when the page sizes differ, then checks every field of `fields` on
    the result. Returns the snapshot to restore, the re-cut report (None if none was
    needed), and every identity difference as [snapshot, engine] (for reports, not refusals)."""
    snap.identity.check_matches(engine, tuple(f for f in fields if f != "page_size"))
    differences = snap.identity.differences(engine)
    fitted, report = fit_page_size(snap, layout() if callable(layout) else layout)
    fitted.identity.check_matches(engine, fields)
    return fitted, report, differences


def _recut_tree(tree: PrefixTree, page: int) -> tuple[PrefixTree, torch.Tensor, int]:
    """The re-cut tree (one node per page, then compacted), the source token row of every
    target slot ([target pages, page]), and the leaf tokens dropped.

    One pass over the nodes, parents first: each node continues from where its parent's
    tokens left off (the target node of the last whole page, and the fewer than `page`
    tokens after it), so the work is linear in the tokens, whatever the tree's depth."""
    keys = tree.keys()
    cut = _Cutter(tree.page_size, page)
    has_children = {n.parent for n in tree.nodes}
    state: dict[int, tuple[int, list[int], list[int]]] = {ROOT: (ROOT, [], [])}
    dropped = 0
    for i, n in enumerate(tree.nodes):
        if n.parent != ROOT and keys[i] != keys[n.parent]:
            # Another namespace: its whole path is cut again from the root under its key.
            tokens, pages = tree.path(n.parent)
            start = cut.extend((ROOT, [], []), tokens, pages, keys[i])
        else:
            start = state[n.parent]
        mine = cut.extend(start, n.tokens, n.pages, keys[i])
        if i in has_children:
            state[i] = mine
        else:
            dropped += len(mine[1])
    rows = torch.tensor(cut.rows, dtype=torch.int64).reshape(-1, page)
    return _compact(cut.paged), rows, dropped


class _Cutter:
    """Builds the one-node-per-page target tree, sharing equal pages under one parent."""

    def __init__(self, src_page: int, page: int) -> None:
        self.src_page, self.page = src_page, page
        self.paged = PrefixTree(page)
        self.children: dict[tuple, int] = {}
        self.rows: list[list[int]] = []

    def extend(self, start: tuple[int, list[int], list[int]], tokens: list[int], pages: list[int],
               key: "str | None") -> tuple[int, list[int], list[int]]:
        """From (target node, tail tokens, their source rows), appends `tokens` (held in
        source `pages`) and cuts every whole target page; returns the new such triple."""
        parent, tail, tail_rows = start
        sp = self.src_page
        span = tail + list(tokens)
        span_rows = tail_rows + [pages[t // sp] * sp + t % sp for t in range(len(tokens))]
        whole = len(span) // self.page * self.page
        for at in range(0, whole, self.page):
            chunk = tuple(span[at:at + self.page])
            k = (parent, chunk, key)
            if k not in self.children:
                self.children[k] = self.paged.add(parent, list(chunk), [len(self.rows)],
                                                  key if parent == ROOT else None)
                self.rows.append(span_rows[at:at + self.page])
            parent = self.children[k]
        return parent, span[whole:], span_rows[whole:]


def _compact(tree: PrefixTree) -> PrefixTree:
    """Merges each only child into its parent (same namespace); node order stays parents-first."""
    counts: dict[int, int] = {}
    for n in tree.nodes:
        counts[n.parent] = counts.get(n.parent, 0) + 1
    out = PrefixTree(tree.page_size)
    into: dict[int, int] = {}
    for i, n in enumerate(tree.nodes):
        if n.parent != ROOT and counts[n.parent] == 1 and n.extra_key is None:
            target = out.nodes[into[n.parent]]
            target.tokens.extend(n.tokens)
            target.pages.extend(n.pages)
            into[i] = into[n.parent]
        else:
            into[i] = out.add(into.get(n.parent, ROOT), n.tokens, n.pages, n.extra_key)
    return out


def _gather_rows(pages: torch.Tensor, src: KVLayout, rows: torch.Tensor, dst: KVLayout) -> torch.Tensor:
    """Target pages whose token slots hold the K/V of source token rows `rows`."""
    k, v = src.planes(pages.contiguous())
    shape = (-1, src.num_kv_heads, src.head_dim)
    out = torch.empty((rows.shape[0], dst.page_elems), dtype=pages.dtype)
    flat = rows.reshape(-1)
    dst.write_planes(out, k.reshape(shape)[flat], v.reshape(shape)[flat])
    return out


def prefix_rows(snap: StateSnapshot, tokens: list[int], n: int,
                extra_key: "str | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the first `n` tokens of `tokens` as the snapshot holds them, whatever its
    page size and layout: ([layers, n, heads, head_dim], same for V). For comparing what two
    engines hold for the same prefix."""
    src = snap.kv.layout
    flat, _ = fit_page_size(snap, _token_layout(src))
    tree = flat.prefix
    if tree.shared_prefix(tokens, extra_key) < n:
        raise SchemaError(f"prefix_rows: the snapshot holds fewer than {n} tokens of the path")
    children: dict[int, list[int]] = {}
    keys = tree.keys()
    for i, node in enumerate(tree.nodes):
        children.setdefault(node.parent, []).append(i)
    pages, node, done = [], ROOT, 0
    while done < n:
        node = next(c for c in children.get(node, []) if keys[c] == extra_key
                    and tree.nodes[c].tokens[0] == tokens[done])
        take = min(len(tree.nodes[node].tokens), n - done)
        pages += tree.nodes[node].pages[:take]
        done += take
    ids = torch.tensor(pages, dtype=torch.int64)
    ks, vs = [], []
    for layer in flat.kv.layers:
        k, v = flat.kv.layout.planes(layer.tensor().index_select(0, ids))
        ks.append(k.reshape(n, src.num_kv_heads, src.head_dim))
        vs.append(v.reshape(n, src.num_kv_heads, src.head_dim))
    return torch.stack(ks), torch.stack(vs)


def _token_layout(src: KVLayout) -> KVLayout:
    from .kv_layout import nhd_layout

    return src if src.page_size == 1 else nhd_layout(1, src.num_kv_heads, src.head_dim, src.dtype)
