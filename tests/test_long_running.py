"""A server restores thousands of times: mappings, memory and KV blocks stay flat."""


import pytest

import thaw

from .engines import needs_vllm
from .helpers import small_snapshot


def _mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_kept_snapshot_maps_each_section_once_and_caches_no_copies(tmp_path):
    path = tmp_path / "s.thaw"
    thaw.save(small_snapshot(), path)
    snap = thaw.load(path)
    layer = snap.kv.layers[0]
    first = layer.mapped()
    before = _mappings()
    for _ in range(2000):
        again = layer.mapped()
    assert _mappings() == before and snap.kv.layers[0].container.num_mappings == 1
    assert again.data_ptr() == first.data_ptr()
    weight = snap.weights["w"]
    a, b = weight.tensor(), weight.tensor()
    assert a.data_ptr() != b.data_ptr() and not weight.in_memory  # read each time, never kept


@needs_vllm
@pytest.mark.engine
def test_two_thousand_restores_keep_mappings_memory_and_blocks_flat(tmp_path):
    from thaw.testing.tiny_model import build_tiny_llama
    from thaw.workers import EngineWorker

    driver = "thaw.adapters.vllm.driver:VLLMDriver"
    model = str(build_tiny_llama(tmp_path / "tiny"))
    prompt = [4 + (i * 37) % 500 for i in range(200)]
    snap = str(tmp_path / "trunk.thaw")
    with EngineWorker(driver, {"model": model}) as parent:
        parent.call("generate", prompt_token_ids=prompt, max_tokens=1)
        parent.call("snapshot", path=snap, weights=False)
    with EngineWorker(driver, {"model": model}) as w:
        free = w.call("state")["free_blocks"]

        def cycle():  # an empty cache, then the trunk's 6 blocks written again
            w.call("reset_prefix_cache")
            report = w.call("restore", path=snap, weights=False)
            assert report["pages_written"] == 6

        for _ in range(200):  # warm-up: allocator pools, caches of the opened snapshot
            cycle()
        start = w.call("process_stats")
        for _ in range(1800):
            cycle()
        end = w.call("process_stats")
        w.call("reset_prefix_cache")
        assert w.call("state")["free_blocks"] == free
        assert w.call("generate", prompt_token_ids=prompt, max_tokens=1)["cached_tokens"] == 0
    assert end["mappings"] <= start["mappings"] + 2, (start, end)
    assert end["rss_bytes"] - start["rss_bytes"] < 32 * 2**20, (start, end)
