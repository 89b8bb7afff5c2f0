"""Re-cutting snapshots between page sizes and layouts (the engine-free half of a
cross-engine restore): every K and V row of every kept token arrives bit-identical."""

import torch
from hypothesis import given, settings, strategies as st

from thaw.core import PrefixTree, StateSnapshot
from thaw.core.layouts import named_layout
from thaw.core.recut import recut

HEADS, DIM = 2, 4


def token_rows(snap: StateSnapshot, tokens: list[int], key=None) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V rows [n, H, D] of the whole pages of `tokens` the snapshot holds."""
    n = snap.prefix.shared_prefix(tokens, key)
    layout = snap.kv.layout
    tree = snap.prefix
    # pages along the path, including a partly matching last node
    pages, node, done = [], -1, 0
    while done < n:
        child = next(i for i, c in enumerate(tree.nodes) if c.parent == node
                     and tree.key_of(i) == key and c.tokens[:layout.page_size] == tokens[done:done + layout.page_size])
        take = min(len(tree.nodes[child].tokens), n - done)
        pages += tree.nodes[child].pages[: take // layout.page_size]
        done += take
        node = child
    ks, vs = [], []
    for layer in snap.kv.layers:
        k, v = layout.planes(layer.tensor()[pages].contiguous()) if pages else layout.planes(
            torch.empty(0, layout.page_elems, dtype=layer.dtype))
        ks.append(k.reshape(-1, HEADS, DIM))
        vs.append(v.reshape(-1, HEADS, DIM))
    return torch.stack(ks), torch.stack(vs)


def causal_rows(prefix: tuple, seed: int, layers: int = 2) -> torch.Tensor:
    """K and V of the last token of `prefix`, a function of the whole prefix only, as in a
    causal model: [layers, 2, H, D]."""
    g = torch.Generator().manual_seed(hash((prefix, seed)) % 2**31)
    return torch.randn(layers, 2, HEADS, DIM, generator=g)


def random_snapshot(paths: list[list[int]], page: int, layout_name: str, seed: int, keys=None) -> StateSnapshot:
    layout = named_layout(layout_name, page, HEADS, DIM, "float32")
    tree = PrefixTree(page)
    fresh = iter(range(10**6))
    for i, p in enumerate(paths):
        whole = len(p) // page * page
        if whole:
            tree.add_path(p[:whole], [next(fresh) for _ in range(whole // page)], (keys or {}).get(i))
    ids = {}
    for n in tree.nodes:
        n.pages = [ids.setdefault(pg, len(ids)) for pg in n.pages]
    layers = [torch.empty(len(ids), layout.page_elems) for _ in range(2)]
    for node, tokens, pages in tree.walk():
        for j, pg in enumerate(pages):
            rows = torch.stack([causal_rows((tree.key_of(node),) + tuple(tokens[: j * page + t + 1]), seed)
                                for t in range(page)])  # [P, layers, 2, H, D]
            for layer in range(2):
                k, v = layout.planes(layers[layer][pg:pg + 1])
                k[0].copy_(rows[:, layer, 0])
                v[0].copy_(rows[:, layer, 1])
    return StateSnapshot.from_kv(layout, layers, tree)


paths = st.lists(st.lists(st.integers(4, 7), min_size=1, max_size=40), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(paths=paths, src=st.sampled_from([(1, "sglang.nhd"), (4, "vllm.cpu.vec"), (8, "vllm.flash_attn")]),
       dst=st.sampled_from([(1, "sglang.nhd"), (4, "vllm.cpu.vec"), (2, "thaw.nhd")]), seed=st.integers(0, 99))
def test_every_kept_token_row_arrives_bit_identical(paths, src, dst, seed):
    snap = random_snapshot(paths, src[0], src[1], seed)
    out, report = recut(snap, named_layout(dst[1], dst[0], HEADS, DIM, "float32"))
    assert out.identity.page_size == dst[0] and out.kv.layout.name == dst[1]
    for p in paths:
        kept = min(snap.prefix.shared_prefix(p), len(p) // dst[0] * dst[0])
        kept = kept // dst[0] * dst[0]
        assert out.prefix.shared_prefix(p) >= kept
        k0, v0 = token_rows(snap, p)
        k1, v1 = token_rows(out, p)
        assert torch.equal(k0[:, :kept], k1[:, :kept]) and torch.equal(v0[:, :kept], v1[:, :kept])
    assert report.leaf_tokens_dropped == sum(
        len(snap.prefix.path(leaf)[0]) % dst[0] for leaf in snap.prefix.leaves())


def test_page_one_to_blocks_and_back_keeps_whole_blocks_and_namespaces():
    seq = [4 + i % 3 for i in range(70)]
    snap = random_snapshot([seq, seq[:40] + [9] * 10, seq[:33]], 1, "sglang.nhd", 0,
                           keys={2: "cache_salt:s"})
    blocks, report = recut(snap, named_layout("vllm.cpu.vec", 16, HEADS, DIM, "float32"))
    assert blocks.prefix.shared_prefix(seq) == 64 and report.leaf_tokens_dropped == 6 + 2 + 1
    assert blocks.prefix.shared_prefix(seq[:33], "cache_salt:s") == 32
    assert len(blocks.prefix.nodes) == 4  # shared 32, two branches, the salted path
    back, _ = recut(blocks, named_layout("sglang.nhd", 1, HEADS, DIM, "float32"))
    for p in (seq, seq[:40] + [9] * 10):
        n = blocks.prefix.shared_prefix(p)
        assert back.prefix.shared_prefix(p) == n
        assert torch.equal(token_rows(back, p)[0][:, :n], token_rows(snap, p)[0][:, :n])


def test_prefix_rows_reads_the_same_tokens_through_any_page_size():
    from thaw.core.recut import prefix_rows

    seq = [4 + i % 5 for i in range(50)]
    snap = random_snapshot([seq, seq[:20] + [9] * 8], 1, "sglang.nhd", 3)
    blocks, _ = recut(snap, named_layout("vllm.cpu.vec", 8, HEADS, DIM, "float32"))
    k0, v0 = prefix_rows(snap, seq, 48)
    k1, v1 = prefix_rows(blocks, seq, 48)
    assert k0.shape == (2, 48, HEADS, DIM) and torch.equal(k0, k1) and torch.equal(v0, v1)
    assert torch.equal(prefix_rows(snap, seq[:20] + [9] * 8, 24)[0], prefix_rows(blocks, seq[:20] + [9] * 8, 24)[0])


def comb_snapshot(depth: int, page: int = 2) -> StateSnapshot:
    from thaw.testing.trees import comb_snapshot as comb

    return comb(depth, page, HEADS, DIM)


def test_deep_trees_are_cut_in_one_pass_without_walking_paths(monkeypatch):
    """A 3,000-deep comb re-cuts from each node's parent state: no root-to-leaf walk per leaf
    (which made convert quadratic in depth), and every side leaf keeps its own row."""
    snap = comb_snapshot(3000)

    def no_walks(self, node):
        raise AssertionError("re-cut walked a whole path")
    monkeypatch.setattr(PrefixTree, "path", no_walks)
    out, report = recut(snap, named_layout("thaw.nhd", 4, HEADS, DIM, "float32"))
    monkeypatch.undo()
    assert report.leaf_tokens_dropped == sum(
        len(snap.prefix.path(leaf)[0]) % 4 for leaf in snap.prefix.leaves())
    # The trunk is kept whole; at the deepest leaf the path is 6,002 tokens: 6,000 kept.
    trunk = [t for i in range(3000) for t in [i, i]]
    assert out.prefix.shared_prefix(trunk) == 6000
    k0, _ = token_rows(snap, trunk)
    k1, _ = token_rows(out, trunk)
    assert torch.equal(k0, k1)


def test_diff_of_a_deep_comb_reports_each_divergent_leaf_once():
    from thaw.core.summary import diff_snapshots

    a, b = comb_snapshot(2000), comb_snapshot(2000)
    b.prefix.nodes[2 * 1500 + 1].tokens = [7, 7]  # one side leaf deep down differs
    d = diff_snapshots(a, b)
    assert d["only_in_a_pages"] == d["only_in_b_pages"] == 1
    assert [(v["only_in"], v["leaf"], v["diverges_at_token"]) for v in d["divergences"]] == [
        ("a", 3001, 3002), ("b", 3001, 3002)]
