"""Tensor-parallel snapshots without an engine: KV heads split over ranks, merged back and
re-sharded between sizes, every K and V element bit for bit, in every named layout."""

import copy

import pytest
import torch

import thaw
from thaw.core import Identity, PrefixTree, StateSnapshot
from thaw.core.layouts import named_layout
from thaw.core.tp import merge_ranks, reshard, split_heads
from thaw.core.tp import rank_kv, view_at
from thaw.core.tp_files import SET_KEY, RankSetWriter, load_ranks, rank_file_name, rank_files, save_ranks

HEADS, DIM, PAGES = 8, 16, 6
LAYOUTS = [("thaw.nhd", 4, "float32"), ("sglang.nhd", 1, "float32"), ("vllm.cpu.vec", 8, "float32"),
           ("vllm.flash_attn", 16, "bfloat16"), ("vllm.cpu.amx", 32, "bfloat16")]


def full_snapshot(name: str, page: int, dtype: str, seed: int = 0) -> StateSnapshot:
    layout = named_layout(name, page, HEADS, DIM, dtype)
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(PAGES, layout.page_elems, generator=g).to(getattr(torch, dtype)) for _ in range(2)]
    tree = PrefixTree(page)
    tokens = torch.randint(4, 100, (4 * page,), generator=g).tolist()
    tree.add_path(tokens, [0, 1, 2, 3])
    tree.add_path(tokens[:page] + [3] * page, [0, 4])
    ident = Identity(model_architecture="Tiny", dtype=dtype, num_layers=2, num_kv_heads=HEADS, head_dim=DIM,
                     page_size=page, kv_layout=name, engine="vllm")
    snap = StateSnapshot.from_kv(layout, layers, tree, ident)
    snap.weights = {"w": thaw.TensorData.of(torch.randn(4, 4, generator=g))}
    snap.identity.weights_digest = ""
    return snap


def kv_planes(snap):
    """K and V of every layer as [layers, pages, page_size, heads, dim]."""
    ks, vs = zip(*(snap.kv.layout.planes(layer.tensor().contiguous()) for layer in snap.kv.layers))
    return torch.stack(ks), torch.stack(vs)


@pytest.mark.parametrize("name,page,dtype", LAYOUTS)
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_split_gives_each_rank_its_heads_and_merge_gives_them_back(name, page, dtype, size):
    snap = full_snapshot(name, page, dtype)
    ranks = split_heads(snap, size)
    k, v = kv_planes(snap)
    for r, part in enumerate(ranks):
        assert (part.identity.tp_rank, part.identity.tp_size, part.identity.num_kv_heads) == (r, size, HEADS // size)
        assert part.kv.layout.name == name and part.kv.layout.num_kv_heads == HEADS // size
        kr, vr = kv_planes(part)
        h = slice(r * HEADS // size, (r + 1) * HEADS // size)
        assert torch.equal(kr, k[..., h, :]) and torch.equal(vr, v[..., h, :])
        assert bool(part.weights) == (r == 0) and part.prefix.nodes == snap.prefix.nodes
    whole = merge_ranks(ranks) if size > 1 else ranks[0]
    assert whole.kv.layout == snap.kv.layout and whole.identity.tp_size == 1
    for a, b in zip(whole.kv.layers, snap.kv.layers):
        assert torch.equal(a.tensor().view(torch.uint8), b.tensor().view(torch.uint8))


@pytest.mark.parametrize("name,page,dtype", LAYOUTS[:3])
def test_reshard_between_sizes_equals_splitting_the_whole(name, page, dtype, tmp_path):
    snap = full_snapshot(name, page, dtype, seed=3)
    paths = save_ranks(split_heads(snap, 4), tmp_path / "tp4")
    assert [p.name for p in paths] == [rank_file_name(r, 4) for r in range(4)]
    two = reshard(load_ranks(tmp_path / "tp4"), 2)
    direct = split_heads(snap, 2)
    for a, b in zip(two, direct):
        assert a.identity == b.identity
        for x, y in zip(a.kv.layers, b.kv.layers):
            assert torch.equal(x.tensor(), y.tensor())


def test_a_layout_no_name_rebuilds_is_resharded_token_major():
    snap = full_snapshot("thaw.nhd", 4, "float32")
    odd = copy.deepcopy(snap.kv.layout)
    object.__setattr__(odd, "name", "some.engine")
    snap.kv.layout = odd
    ranks = split_heads(snap, 2)
    assert ranks[0].kv.layout.name == "thaw.nhd"
    k, _ = kv_planes(snap)
    assert torch.equal(kv_planes(ranks[1])[0], k[..., HEADS // 2:, :])


def test_refusals_name_what_is_wrong(tmp_path):
    snap = full_snapshot("thaw.nhd", 4, "float32")
    with pytest.raises(thaw.SchemaError, match="8 KV heads cannot be split evenly over 3 ranks"):
        split_heads(snap, 3)
    params = full_snapshot("thaw.nhd", 4, "float32")
    params.weights_format = "vllm.parameters"
    with pytest.raises(thaw.SchemaError, match="sharded by the engine"):
        split_heads(params, 2)
    ranks = split_heads(snap, 2)
    other = split_heads(full_snapshot("thaw.nhd", 4, "float32", seed=9), 2)
    with pytest.raises(thaw.SchemaError, match="rank 1: its set id differs"):
        merge_ranks([ranks[0], other[1]])  # ranks of two takes
    other[1].extras[SET_KEY] = ranks[0].extras[SET_KEY]
    with pytest.raises(thaw.SchemaError, match="rank 1: its prefix tree differs"):
        merge_ranks([ranks[0], other[1]])
    with pytest.raises(thaw.SchemaError, match="expected 0 of 2"):
        merge_ranks([ranks[1], ranks[0]])
    with pytest.raises(thaw.SchemaError, match="split_heads takes a TP=1 snapshot"):
        split_heads(ranks[0], 2)
    paths = save_ranks(ranks, tmp_path / "tp2")
    with pytest.raises(thaw.SchemaError, match="pass the directory"):
        load_ranks(paths[0])  # one rank alone is not a snapshot
    paths[1].unlink()
    with pytest.raises(thaw.SchemaError, match=r"ranks \[1\] of 2 are missing"):
        load_ranks(tmp_path / "tp2")


@pytest.mark.parametrize("size,target", [(1, 2), (2, 1), (2, 4), (4, 2), (2, 2)])
def test_one_rank_at_another_size_is_that_rank_of_the_whole(size, target, tmp_path):
    snap = full_snapshot("vllm.cpu.vec", 8, "float32", seed=5)
    save_ranks(split_heads(snap, size) if size > 1 else [snap], tmp_path / "src")
    ranks = load_ranks(tmp_path / "src") if size > 1 else [thaw.load(tmp_path / "src")]
    expected = split_heads(snap, target) if target > 1 else [snap]
    view = view_at(ranks, target)
    assert (view.identity.num_kv_heads, view.identity.tp_size) == (HEADS // target, target)
    assert view.kv.num_pages == PAGES and view.kv.layout == expected[0].kv.layout
    for rank in range(target):
        layout, layers = rank_kv(ranks, target, rank)
        assert layout == expected[rank].kv.layout
        for got, want in zip(layers, expected[rank].kv.layers):
            assert torch.equal(got.view(torch.uint8), want.tensor().view(torch.uint8))


def test_a_set_is_replaced_whole_or_not_at_all(tmp_path):
    snap = full_snapshot("thaw.nhd", 4, "float32")
    first = save_ranks(split_heads(snap, 2), tmp_path / "tp")
    before = [p.read_bytes() for p in first]
    with pytest.raises(RuntimeError, match="rank 1 crashed"):
        with RankSetWriter(tmp_path / "tp", 2) as writer:
            thaw.save(split_heads(full_snapshot("thaw.nhd", 4, "float32", seed=2), 2)[0], writer.path(0))
            raise RuntimeError("rank 1 crashed")
    assert [p.read_bytes() for p in rank_files(tmp_path / "tp")] == before
    assert sorted(e.name for e in tmp_path.iterdir()) == ["tp"]  # no staging directory left
    writer = RankSetWriter(tmp_path / "tp", 2)
    thaw.save(split_heads(snap, 2)[0], writer.path(0))
    with pytest.raises(thaw.SchemaError, match=r"ranks \[1\] of 2 were not written"):
        writer.commit()
    writer.abort()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(thaw.SchemaError, match="is a file"):
        RankSetWriter(tmp_path / "file", 2)


def test_convert_tp_on_the_command_line(tmp_path):
    import subprocess
    import sys

    snap = full_snapshot("vllm.cpu.vec", 8, "float32")
    thaw.save(snap, tmp_path / "tp1.thaw")
    run = lambda *a: subprocess.run([sys.executable, "-m", "thaw.cli", "convert", *map(str, a)],
                                    capture_output=True, text=True, cwd=tmp_path)
    out = run(tmp_path / "tp1.thaw", tmp_path / "tp4", "--tp", "4")
    assert out.returncode == 0, out.stderr
    assert "4 ranks" in out.stdout and (tmp_path / "tp4" / rank_file_name(3, 4)).is_file()
    cli = lambda *a: subprocess.run([sys.executable, "-m", "thaw.cli", *map(str, a)],
                                    capture_output=True, text=True, cwd=tmp_path)
    shown = cli("inspect", tmp_path / "tp4")
    assert shown.returncode == 0 and "4 rank files of one take" in shown.stdout
    assert "rank 3 of 4" in shown.stdout and shown.stdout.count("kv heads 2") == 4
    checked = cli("verify", tmp_path / "tp4")
    assert checked.returncode == 0 and "OK (4 ranks of one take)" in checked.stdout
    out = run(tmp_path / "tp4", tmp_path / "back.thaw", "--tp", "1")
    assert out.returncode == 0, out.stderr
    back = thaw.load(tmp_path / "back.thaw")
    assert all(torch.equal(a.tensor(), b.tensor()) for a, b in zip(back.kv.layers, snap.kv.layers))
    assert run(tmp_path / "tp1.thaw", tmp_path / "x", "--tp", "3").returncode == 2
    assert run(tmp_path / "tp1.thaw", tmp_path / "x", "--tp", "2", "--layout", "thaw.nhd").returncode == 64
    (tmp_path / "tp4" / rank_file_name(2, 4)).unlink()
    assert "ranks [2] of 4 are missing" in cli("verify", tmp_path / "tp4").stderr
