"""A fork fleet of SGLang engines (the same `EnginePool` as vLLM's): one started engine
snapshots its own trunk, then forks it into branches twice, the prefix cache emptied in
between; every branch hits the restored trunk. Greedy branches give the engine's own
output on its cached trunk (SGLang honours per-request seeds only with deterministic
inference, which its CPU attention backend lacks, so sampled branches are not compared)."""

import pytest

from thaw.fleet import EnginePool, LocalPlacement

from .engine_configs import tiny_models
from .engines import needs_sglang

pytestmark = [needs_sglang, pytest.mark.engine]
PROMPT = [4 + (i * 37) % 500 for i in range(300)]


def test_an_sglang_pool_forks_its_trunk_into_branches(tmp_path):
    model = tiny_models(tmp_path / "models")[0]
    path = str(tmp_path / "trunk.thaw")
    events = []
    with EnginePool("sglang", {"model": model}, 1, placement=LocalPlacement(),
                    on_event=lambda kind, info: events.append(kind)) as pool:
        engine = pool.engines[0]
        engine.call("generate", prompt_token_ids=PROMPT, max_tokens=1)
        own = engine.call("generate", prompt_token_ids=PROMPT, max_tokens=8)  # on its cached trunk
        engine.call("snapshot", path=path)
        assert engine.call("reset_prefix_cache")
        first = pool.fork(path, 3, prompt=PROMPT, max_tokens=8, temperature=0.0, seed=100)
        assert engine.call("reset_prefix_cache")
        again = pool.fork(path, 3, prompt=PROMPT, max_tokens=8, temperature=0.0, seed=100)
    assert own["cached_tokens"] == len(PROMPT) - 1
    assert [b.index for b in first] == [0, 1, 2] and [b.seed for b in first] == [100, 101, 102]
    assert all(b.cached_tokens == len(PROMPT) - 1 and b.attempts == 1 for b in first + again)
    assert all(b.tokens == own["tokens"] for b in first + again)
    assert events.count("restore") == 2 and "lost" not in events
