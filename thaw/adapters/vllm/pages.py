"""Where each page of a snapshot's prefix tree sits: parents, depths, runs of page ids, and
the block record a restored page registers (pure functions of the snapshot)."""

from __future__ import annotations

from typing import Optional

from thaw.core import StateSnapshot

from .recorder import BlockRecord


def runs(pages: list[int]) -> list[tuple[tuple[int, int], int]]:
    """Splits sorted page ids into runs of consecutive ids: ((first, count), offset in list)."""
    runs: list[tuple[tuple[int, int], int]] = []
    for at, page in enumerate(pages):
        if runs and runs[-1][0][0] + runs[-1][0][1] == page:
            (first, count), start = runs[-1]
            runs[-1] = ((first, count + 1), start)
        else:
            runs.append(((page, 1), at))
    return runs


def page_parents(snap: StateSnapshot) -> dict[int, Optional[int]]:
    parents: dict[int, Optional[int]] = {}
    last: dict[int, Optional[int]] = {}
    for i, node in enumerate(snap.prefix.nodes):
        prev = last.get(node.parent) if node.parent >= 0 else None
        for page in node.pages:
            parents[page] = prev
            prev = page
        last[i] = prev
    return parents


def page_depths(snap: StateSnapshot) -> dict[int, int]:
    """Number of ancestor pages of each page (nodes list parents before children)."""
    depth: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, node in enumerate(snap.prefix.nodes):
        first = last[node.parent] + 1 if node.parent >= 0 else 0
        for k, page in enumerate(node.pages):
            depth[page] = first + k
        last[i] = first + len(node.pages) - 1
    return depth


def page_index(snap: StateSnapshot) -> dict[int, tuple[int, int]]:
    """page -> (node, position of the page within the node)."""
    return {page: (i, k) for i, node in enumerate(snap.prefix.nodes) for k, page in enumerate(node.pages)}


def page_record(snap: StateSnapshot, index: dict[int, tuple[int, int]], page: int,
                 parent_hash: Optional[bytes]) -> BlockRecord:
    i, k = index[page]
    node = snap.prefix.nodes[i]
    bs = snap.prefix.page_size
    root_page = node.parent < 0 and k == 0
    return BlockRecord(parent=parent_hash, tokens=tuple(node.tokens[k * bs:(k + 1) * bs]),
                       extra_key=snap.prefix.key_of(i) if root_page else None, supported=True)
