"""Schema pieces: KV layouts and conversion, prefix tree, embedding from plain tensors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import thaw
from thaw.core import (KVLayout, KVPlane, PrefixTree, SchemaError, StateSnapshot, convert_pages,
                       nhd_layout)


def vllm_cpu_like(p, h, d):
    """K transposed [D, P] then V [P, D] inside each head, heads outermost."""
    return KVLayout("cpu-like", p, h, d, "float32",
                    KVPlane(0, 1, 2 * p * d, p), KVPlane(p * d, d, 2 * p * d, 1))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 4), st.integers(1, 8), st.integers(0, 5))
def test_convert_round_trip_is_exact(p, h, d, n):
    src, dst = vllm_cpu_like(p, h, d), nhd_layout(p, h, d, "float32")
    src.validate()
    pages = torch.randn(n, src.page_elems)
    there = convert_pages(pages, src, dst)
    k1, v1 = src.planes(pages)
    k2, v2 = dst.planes(there)
    assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert torch.equal(convert_pages(there, dst, src), pages)


def test_layout_must_cover_page_exactly():
    bad = KVLayout("bad", 2, 1, 2, "float32", KVPlane(0, 2, 4, 1), KVPlane(0, 2, 4, 1))
    with pytest.raises(SchemaError, match="exactly once"):
        bad.validate()
    with pytest.raises(SchemaError, match="unknown dtype"):
        nhd_layout(2, 1, 2, "float17").validate()


def test_layout_json_round_trip():
    lay = vllm_cpu_like(4, 2, 8)
    assert KVLayout.from_json(lay.to_json()) == lay
    with pytest.raises(SchemaError, match="malformed"):
        KVLayout.from_json({"name": "x"})


def test_prefix_tree_match_and_keys():
    t = PrefixTree(2)
    t.add_path([1, 2, 3, 4], [0, 1])
    t.add_path([1, 2, 5, 6], [0, 2])
    t.add_path([1, 2], [3], extra_key="lora-1")
    assert len(t.nodes) == 4
    assert t.match([1, 2, 3, 4, 9]) == (4, [0, 1])
    assert t.match([1, 2, 5]) == (2, [0])
    assert t.match([1, 2], extra_key="lora-1") == (2, [3])
    assert t.longest_prefix() == 4 and sorted(t.leaves()) == [1, 2, 3]
    t.validate(4)
    with pytest.raises(SchemaError, match="outside"):
        t.validate(3)


def test_from_tensors_embedding_path(tmp_path):
    weights = {"a": torch.randn(4, 4), "b": torch.ones(3, dtype=torch.bfloat16)}
    snap = thaw.StateSnapshot.from_tensors(weights)
    thaw.save(snap, tmp_path / "w.thaw")
    back = thaw.load(tmp_path / "w.thaw")
    assert all(torch.equal(back.weights[k].tensor(), v) for k, v in weights.items())
    assert back.identity.weights_digest == snap.identity.weights_digest != ""
    with pytest.raises(SchemaError):
        StateSnapshot.from_tensors({"a": [1, 2]})
    assert thaw.core.StateSnapshot is thaw.StateSnapshot


def test_shared_prefix_counts_a_partly_matching_node_in_whole_pages():
    from thaw.core import PrefixTree

    t = PrefixTree(2)
    a = t.add(-1, [1, 2, 3, 4, 5, 6], [0, 1, 2])
    t.add(a, [7, 8], [3])
    t.add(-1, [9, 9], [4], extra_key="cache_salt:x")
    assert t.shared_prefix([1, 2, 3, 4, 5, 6, 7, 8, 0, 0]) == 8
    assert t.shared_prefix([1, 2, 3, 9]) == 2  # 3 tokens agree, 1 whole page
    assert t.shared_prefix([1, 2, 3, 4, 0]) == 4
    assert t.shared_prefix([9, 9]) == 0 and t.shared_prefix([9, 9], "cache_salt:x") == 2
    assert t.shared_prefix([1, 2, 3, 4, 5, 6, 7, 8], before=1) == 6
    assert t.match_node([1, 2, 3, 4, 5, 6, 7]) == (6, a)


def test_weights_format_round_trips_and_defaults_to_checkpoint(tmp_path):
    snap = StateSnapshot.from_tensors({"w": torch.ones(3)})
    assert snap.weights_format == "checkpoint"
    thaw.save(snap, tmp_path / "a.thaw")
    assert thaw.load(tmp_path / "a.thaw").weights_format == "checkpoint"
    snap.weights_format = "vllm.parameters"
    thaw.save(snap, tmp_path / "b.thaw")
    assert thaw.load(tmp_path / "b.thaw").weights_format == "vllm.parameters"
    for bad in ("", "Vllm", "a b", 7, "x" * 65):
        snap.weights_format = bad
        with pytest.raises(SchemaError, match="weights_format"):
            thaw.save(snap, tmp_path / "c.thaw")


def test_engines_refuse_weights_in_a_format_they_do_not_load():
    from thaw.core import IdentityMismatch, check_weights_format

    snap = StateSnapshot.from_tensors({"w": torch.ones(3)})
    snap.weights_format = "vllm.parameters"
    with pytest.raises(IdentityMismatch, match="weights_format"):
        check_weights_format(snap, ("checkpoint",))
    check_weights_format(StateSnapshot(weights_format="vllm.parameters"), ("checkpoint",))  # no weights


def test_unknown_weights_digest_is_never_a_match():
    from thaw.core import IdentityMismatch, check_kv_weights

    check_kv_weights("abc", "abc")
    for mine, theirs in (("", ""), ("abc", ""), ("", "abc"), ("abc", "abd")):
        with pytest.raises(IdentityMismatch, match="weights_digest"):
            check_kv_weights(mine, theirs)
    check_kv_weights("", "", trust_unknown=True)
    check_kv_weights("abc", "", trust_unknown=True)
    with pytest.raises(IdentityMismatch):  # known and different is never trusted
        check_kv_weights("abc", "abd", trust_unknown=True)
