"""Plain-data summaries of snapshots for `thaw inspect` and `thaw diff` (stable JSON)."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from .schema import StateSnapshot

INSPECT_SCHEMA = 1


def unchecked_bytes(snap: StateSnapshot) -> int:
    """Bytes of the snapshot's file whose CRCs have not been checked yet (loading without
    `verify` checks the header and reads only the prefix tree's sections)."""
    c = snap.source
    if c is None:
        return 0
    return sum(s.padded_length for name, s in c.sections.items() if name not in c.checked)


def inspect_snapshot(snap: StateSnapshot) -> dict[str, Any]:
    """The `thaw inspect --json` document; its keys are documented in docs/cli.md."""
    c = snap.source
    sections = [{"name": s.name, "offset": s.offset, "length": s.length, "chunks": s.num_chunks}
                for s in c.sections.values()] if c is not None else []
    prefix: dict[str, Any] = {"nodes": 0, "tokens": 0, "longest_prefix": 0, "leaves": 0}
    if snap.prefix is not None:
        prefix = {"nodes": len(snap.prefix.nodes), "tokens": snap.prefix.num_tokens,
                  "longest_prefix": snap.prefix.longest_prefix(),
                  "leaves": len(snap.prefix.leaves())}
    kv = None
    if snap.kv is not None:
        kv = {"layout": snap.kv.layout.name, "page_size": snap.kv.layout.page_size,
              "num_pages": snap.kv.num_pages, "num_layers": len(snap.kv.layers),
              "bytes": snap.kv.nbytes}
    return {
        "inspect_schema": INSPECT_SCHEMA,
        "path": c.path if c is not None else None,
        "file_bytes": c.file_size if c is not None else None,
        "identity": snap.identity.to_json(),
        "weights": {"count": len(snap.weights), "bytes": sum(w.nbytes for w in snap.weights.values())},
        "weights_from": snap.weights_from,
        "kv": kv,
        "prefix": prefix,
        "requests": [{"request_id": r.request_id, "status": r.status,
                      "prompt_tokens": len(r.prompt_token_ids), "output_tokens": len(r.output_token_ids),
                      "num_computed_tokens": r.num_computed_tokens, "pages": len(r.pages)}
                     for r in snap.requests],
        "sections": sections,
        "unchecked_bytes": unchecked_bytes(snap),
    }


def _page_chain(snap: StateSnapshot) -> dict[bytes, tuple[int, int]]:
    """Digest of every cached page prefix (extra key + tokens up to that page's end) -> (node, page index)."""
    out: dict[bytes, tuple[int, int]] = {}
    if snap.prefix is None:
        return out
    p = snap.prefix.page_size
    digests: dict[int, bytes] = {}
    depth: dict[int, int] = {}  # pages from the root to the end of each node
    keys = snap.prefix.keys()
    for i, n in enumerate(snap.prefix.nodes):
        h = digests[n.parent] if n.parent >= 0 else hashlib.sha256(repr(keys[i]).encode()).digest()
        first = depth.get(n.parent, 0)
        for k in range(len(n.pages)):
            h = hashlib.sha256(h + repr(n.tokens[k * p:(k + 1) * p]).encode()).digest()
            out[h] = (i, first + k)
        digests[i] = h
        depth[i] = first + len(n.pages)
    return out


def diff_snapshots(a: StateSnapshot, b: StateSnapshot) -> dict[str, Any]:
    """Identity differences, shared prefix pages/tokens, and where token paths diverge."""
    ia, ib = a.identity.to_json(), b.identity.to_json()
    identity = {k: [ia.get(k), ib.get(k)] for k in sorted(set(ia) | set(ib)) if ia.get(k) != ib.get(k)}
    ca, cb = _page_chain(a), _page_chain(b)
    shared = set(ca) & set(cb)
    page_a = a.prefix.page_size if a.prefix else 0
    comparable = a.prefix is not None and b.prefix is not None and page_a == b.prefix.page_size
    divergences = []
    if comparable:
        for side, snap, chain in (("a", a, ca), ("b", b, cb)):
            first_unshared: dict[int, int] = {}  # node -> first page depth not in the other tree
            for h, (node, depth) in chain.items():
                if h not in shared:
                    first_unshared[node] = min(depth, first_unshared.get(node, depth))
            lengths = snap.prefix.depths()
            # The shallowest unshared page on each node's path, parents first: linear in nodes.
            at: list[Optional[int]] = []
            for i, n in enumerate(snap.prefix.nodes):
                above = at[n.parent] if n.parent >= 0 else None
                at.append(above if above is not None else first_unshared.get(i))
            for leaf in snap.prefix.leaves():
                if at[leaf] is not None:
                    divergences.append({"only_in": side, "leaf": leaf, "diverges_at_token": at[leaf] * page_a,
                                        "path_tokens": lengths[leaf]})
    return {
        "identity_differences": identity,
        "page_size": [page_a, b.prefix.page_size if b.prefix else 0],
        "comparable": comparable,
        "shared_pages": len(shared) if comparable else 0,
        "shared_prefix_tokens": len(shared) * page_a if comparable else 0,
        "only_in_a_pages": len(ca) - len(shared) if comparable else len(ca),
        "only_in_b_pages": len(cb) - len(shared) if comparable else len(cb),
        "divergences": divergences[:50],
        "unchecked_bytes": {"a": unchecked_bytes(a), "b": unchecked_bytes(b)},
    }
