"""Cache-level properties of the SGLang translation, on SGLang's real cache classes.

Random token sequences go into a real radix cache (legacy `RadixCache` and the default
`UnifiedRadixCache`, Python tree core) over a real `MHATokenToKVPool` and allocator, page
sizes 1 and 4; the cache is captured, restored into a differently sized pool, and the
engine's own `match_prefix` is the oracle: same match lengths, bit-identical K and V rows,
allocator counts consistent (nothing leaked, nothing freed twice).
"""

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from thaw.adapters.sglang import kv_placement as cr, capture as cs
from thaw.adapters.sglang.engine_access import unified_tree
from thaw.core import EngineUnsupported, PrefixTree, ROOT, ThawError

from .engines import needs_sglang

pytestmark = [needs_sglang, pytest.mark.engine]

LAYERS, HEADS, DIM = 2, 2, 8
KINDS = ("unified", "legacy", "unified-rust")


def build(kind: str, page_size: int, size: int):
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
    from sglang.srt.mem_cache.radix_cache import RadixCache
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    from thaw.adapters.sglang.engine_access import component_type, internals
    from thaw.adapters.sglang.slot_walk import install_insert_recorder

    install_insert_recorder(UnifiedRadixCache)  # what thaw's plugin does in a scheduler
    if kind == "unified-rust" and not internals().tree_core:
        pytest.skip("this SGLang release's unified cache has no Rust tree core")
    core = {"tree_core_backend": "rust" if kind == "unified-rust" else "python"} if internals().tree_core else {}
    pool = MHATokenToKVPool(size, page_size, torch.float32, HEADS, DIM, LAYERS, "cpu", False)
    alloc = (TokenToKVPoolAllocator(size, torch.float32, "cpu", pool, False) if page_size == 1 else
             PagedTokenToKVPoolAllocator(size, page_size, torch.float32, "cpu", pool, False))
    params = CacheInitParams(disable=False, req_to_token_pool=ReqToTokenPool(4, 256, "cpu", False),
                             token_to_kv_pool_allocator=alloc, page_size=page_size,
                             tree_components=(component_type().FULL,), **core)
    cache = RadixCache(params) if kind == "legacy" else UnifiedRadixCache(params)
    if kind == "unified-rust" and cache._tree_core_backend != "rust":
        pytest.skip(f"SGLang chose the {cache._tree_core_backend!r} tree core here")
    return cache, pool, alloc


def randomize(pool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for buf in pool.k_buffer + pool.v_buffer:
        buf.copy_(torch.randn(buf.shape, generator=g))


def serve(cache, alloc, tokens, namespace=None) -> None:
    """What SGLang's scheduler does for one finished request: match, fill new slots, insert."""
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams

    n = len(tokens) // cache.page_size * cache.page_size
    if not n:
        return
    held = cr.match_indices(cache, tokens[:n], namespace)
    value = torch.cat([held, alloc.alloc(n - len(held))])
    result = cache.insert(InsertParams(key=cr.radix_key(tokens[:n], namespace), value=value,
                                       prev_prefix_len=len(held)))
    if not unified_tree(cache) and result.prefix_len > len(held):
        alloc.free(value[len(held): result.prefix_len])


def capture(cache, pool, page_size):
    cap = cs.capture_tree(cache, page_size)
    cap.tree.validate(len(cap.pool_pages))
    return cap.tree, cs.gather_pages(pool, cap.pool_pages, page_size)


def assert_same_answers(src, src_pool, dst, dst_pool, queries, namespace=None) -> None:
    for q in queries:
        a, b = cr.match_indices(src, q, namespace), cr.match_indices(dst, q, namespace)
        assert len(a) == len(b), q
        for layer in range(LAYERS):
            assert torch.equal(src_pool.k_buffer[layer][a], dst_pool.k_buffer[layer][b])
            assert torch.equal(src_pool.v_buffer[layer][a], dst_pool.v_buffer[layer][b])


def assert_accounting(cache, alloc, size) -> None:
    """Every slot is either free or held by the (unlocked) tree: nothing leaked or freed twice."""
    assert alloc.available_size() + cache.evictable_size() == size


tokens = st.lists(st.integers(4, 9), min_size=1, max_size=48)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=st.lists(tokens, min_size=1, max_size=10), queries=st.lists(tokens, max_size=10),
       kind=st.sampled_from(KINDS), page_size=st.sampled_from([1, 4]),
       target_size=st.sampled_from([512, 2048]), seed=st.integers(0, 2**16))
def test_roundtrip_into_a_differently_sized_pool(seqs, queries, kind, page_size, target_size, seed):
    src, src_pool, src_alloc = build(kind, page_size, 1024)
    randomize(src_pool, seed)
    for s in seqs:
        serve(src, src_alloc, s)
    tree, pages = capture(src, src_pool, page_size)
    dst, dst_pool, dst_alloc = build(kind, page_size, target_size)
    new = cr.restore_tree(dst, dst_pool, tree, pages)
    assert new == tree.num_tokens
    assert_same_answers(src, src_pool, dst, dst_pool, seqs + queries)
    assert_accounting(dst, dst_alloc, target_size)
    assert capture(dst, dst_pool, page_size)[0].num_tokens == tree.num_tokens


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("page_size", [1, 4])
def test_target_already_holding_part_of_the_tree_keeps_it_and_frees_nothing_twice(kind, page_size):
    rng = random.Random(page_size)
    seqs = [[rng.randrange(4, 8) for _ in range(rng.randrange(8, 40))] for _ in range(12)]
    src, src_pool, src_alloc = build(kind, page_size, 1024)
    randomize(src_pool, 1)
    for s in seqs:
        serve(src, src_alloc, s)
    tree, pages = capture(src, src_pool, page_size)
    dst, dst_pool, dst_alloc = build(kind, page_size, 1024)
    for s in seqs[:4]:
        serve(dst, dst_alloc, s)  # the target's own KV for these (zeros) is kept
    before = capture(dst, dst_pool, page_size)[0].num_tokens
    new = cr.restore_tree(dst, dst_pool, tree, pages)
    assert new == tree.num_tokens - before
    assert_accounting(dst, dst_alloc, 1024)
    for s in seqs:
        assert len(cr.match_indices(dst, s, None)) == len(cr.match_indices(src, s, None))
    assert_same_answers(src, src_pool, dst, dst_pool, seqs[4:][:0])  # own KV differs; lengths checked


def namespaces_of_this_release() -> list:
    """Extra keys, and cache salts where the release has them (0.5.14 has none)."""
    from thaw.adapters.sglang.engine_access import internals

    salted = ["cache_salt:s1", cs.encode_namespace("lora-a", "s2")] if internals().radix_key_salt else []
    return [None, cs.encode_namespace("lora-a", None)] + salted


@pytest.mark.parametrize("kind", KINDS)
def test_namespaces_stay_apart(kind):
    seq = [5, 6, 7, 8] * 6
    src, src_pool, src_alloc = build(kind, 1, 512)
    randomize(src_pool, 2)
    namespaces = namespaces_of_this_release()
    for ns in namespaces:
        serve(src, src_alloc, seq[: 8 + len(ns or "")], ns)
    tree, pages = capture(src, src_pool, 1)
    assert {tree.key_of(i) for i in range(len(tree.nodes))} == set(namespaces)
    dst, dst_pool, dst_alloc = build(kind, 1, 512)
    cr.restore_tree(dst, dst_pool, tree, pages)
    for ns in namespaces + ["sglang:[\"other\", null]"]:
        assert_same_answers(src, src_pool, dst, dst_pool, [seq], ns)
    assert len(cr.match_indices(dst, seq, "sglang:[\"other\", null]")) == 0


def test_a_salted_prefix_is_refused_by_a_release_without_salts():
    from thaw.adapters.sglang.engine_access import internals

    if internals().radix_key_salt:
        pytest.skip("this SGLang release has cache salts")
    src, src_pool, src_alloc = build("unified", 1, 256)
    serve(src, src_alloc, [5, 6, 7, 8] * 4)
    tree, pages = capture(src, src_pool, 1)
    salted = PrefixTree(1)
    salted.add(ROOT, tree.nodes[0].tokens, tree.nodes[0].pages, "cache_salt:s1")
    dst, dst_pool, dst_alloc = build("unified", 1, 256)
    free = cr.free_slots(dst)
    with pytest.raises(EngineUnsupported, match="has no cache salt"):
        cr.restore_tree(dst, dst_pool, salted, pages)
    assert cr.free_slots(dst) == free


@pytest.mark.parametrize("kind", KINDS)
def test_too_small_a_pool_is_refused_before_anything_changes(kind):
    src, src_pool, src_alloc = build(kind, 1, 1024)
    randomize(src_pool, 3)
    serve(src, src_alloc, list(range(4, 200)))
    tree, pages = capture(src, src_pool, 1)
    dst, dst_pool, dst_alloc = build(kind, 1, 128)
    serve(dst, dst_alloc, [4, 5, 6, 7])
    free_before, tree_before = dst_alloc.available_size(), capture(dst, dst_pool, 1)[0]
    with pytest.raises(ThawError, match="needs 192 KV slots"):
        cr.restore_tree(dst, dst_pool, tree, pages)
    assert dst_alloc.available_size() == free_before
    assert capture(dst, dst_pool, 1)[0] == tree_before


@pytest.mark.parametrize("kind", KINDS)
def test_unrelated_cached_prefixes_are_evicted_to_make_room(kind):
    src, src_pool, src_alloc = build(kind, 1, 1024)
    randomize(src_pool, 4)
    serve(src, src_alloc, list(range(4, 100)))
    tree, pages = capture(src, src_pool, 1)
    dst, dst_pool, dst_alloc = build(kind, 1, 128)
    serve(dst, dst_alloc, [300 + i for i in range(100)])  # fills most of the target
    cr.restore_tree(dst, dst_pool, tree, pages)
    assert_same_answers(src, src_pool, dst, dst_pool, [list(range(4, 100))])
    assert_accounting(dst, dst_alloc, 128)


def test_rust_tree_core_without_the_recorder_is_refused_naming_the_setting():
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    cache, _, _ = build("unified-rust", 1, 256)

    class NotRecorded(UnifiedRadixCache):
        insert = UnifiedRadixCache.insert.__wrapped__  # as built without thaw's plugin

    cache.__class__ = NotRecorded
    with pytest.raises(EngineUnsupported, match="SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python"):
        cs.capture_tree(cache, 1)


def test_rust_tree_slots_inserted_before_recording_are_reported_not_guessed():
    from thaw.adapters.sglang.scheduler_state import SLOT_TOKENS_ATTRIBUTE

    cache, pool, alloc = build("unified-rust", 1, 256)
    serve(cache, alloc, [4, 5, 6, 7])
    serve(cache, alloc, [4, 5, 8, 9, 10])
    rec = getattr(cache, SLOT_TOKENS_ATTRIBUTE)
    rec.tokens[cr.match_indices(cache, [4, 5, 8], None)[2]] = -1  # as if never recorded
    cap = cs.capture_tree(cache, 1)
    assert cap.tokens_skipped == 3
    assert sorted(map(tuple, (cap.tree.path(i)[0] for i in cap.tree.leaves()))) == [(4, 5, 6, 7)]


def test_empty_tree_roundtrips():
    src, src_pool, _ = build("unified", 4, 256)
    tree, pages = capture(src, src_pool, 4)
    assert tree == PrefixTree(4) and all(p.shape[0] == 0 for p in pages)
    dst, dst_pool, dst_alloc = build("unified", 4, 256)
    assert cr.restore_tree(dst, dst_pool, tree, pages) == 0
    assert dst_alloc.available_size() == 256


@pytest.mark.parametrize("kind", KINDS)
def test_placed_tree_released_leaves_cache_and_slots_as_they_were(kind):
    """Pages written by `place_tree` and then released (a restore failing after the KV
    moved, e.g. in its weights) leave no slot taken and no prefix cached."""
    src, src_pool, src_alloc = build(kind, 1, 256)
    randomize(src_pool, 3)
    path = [5, 6, 7, 8, 9, 10, 4, 4]
    serve(src, src_alloc, path)
    tree, pages = capture(src, src_pool, 1)
    dst, dst_pool, dst_alloc = build(kind, 1, 256)
    free = cr.free_slots(dst)
    placement = cr.place_tree(dst, dst_pool, tree, pages)
    assert cr.free_slots(dst) == free - len(path) and cr.match_length(dst, path, None) == 0
    placement.release()
    assert cr.free_slots(dst) == free and cr.match_length(dst, path, None) == 0
    placement.release()  # idempotent
    assert_accounting(dst, dst_alloc, 256)
    assert cr.restore_tree(dst, dst_pool, tree, pages) == len(path)
    assert_same_answers(src, src_pool, dst, dst_pool, [path])
