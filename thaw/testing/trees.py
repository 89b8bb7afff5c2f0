"""Prefix trees of shapes that stress the tools: deep, not only wide."""

from __future__ import annotations

import torch

from thaw.core import Identity, PrefixTree, StateSnapshot, nhd_layout


def comb_snapshot(depth: int, page: int = 2, heads: int = 1, head_dim: int = 8) -> StateSnapshot:
    """A trunk of `depth` one-page nodes, each with a one-page side leaf (2 * depth nodes,
    page i*2 on the trunk, i*2+1 beside it); every KV element holds its own index."""
    layout = nhd_layout(page, heads, head_dim, "float32")
    tree = PrefixTree(page)
    parent = -1
    for i in range(depth):
        trunk = tree.add(parent, [i] * page, [2 * i])
        tree.add(trunk, [10**7 + i] * page, [2 * i + 1])
        parent = trunk
    layers = [torch.arange(2 * depth * layout.page_elems, dtype=torch.float32).reshape(2 * depth, -1)]
    identity = Identity(model_architecture="Comb", dtype="float32", num_layers=1, num_kv_heads=heads,
                        head_dim=head_dim, page_size=page, kv_layout=layout.name)
    return StateSnapshot.from_kv(layout, layers, tree, identity)
