"""The shared conformance suite against real SGLang (0.5.21 on CPU), engines in separate
processes. SGLang's engine runs page size 1 on CPU (larger pages need its GPU allocator);
page sizes > 1 are covered at the cache level in test_sglang_cache.py."""

import pytest

from thaw.conformance import EngineUnderTest, SnapshotRestoreConformance
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama

from .engines import needs_sglang

pytestmark = [needs_sglang, pytest.mark.engine]


@pytest.fixture(scope="module")
def engine_under_test(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    model = build_tiny_llama(models / "tiny")
    other = build_tiny_llama(models / "other", TinyLlama(num_hidden_layers=3))
    return EngineUnderTest(
        driver="thaw.adapters.sglang.driver:SGLangDriver",
        config={"model": str(model)},
        fresh_config={"load_format": "dummy"},
        mismatches={
            "dtype": ({"dtype": "bfloat16"}, "dtype"),
            "model": ({"model": str(other)}, "model_config_digest"),
        },
        prompt=[4 + (i * 37) % 500 for i in range(300)],
        page_size=1,
        # SGLang runs batches on its own; a long request stays in flight while the
        # driver pauses the engine after a few tokens.
        inflight_max_tokens=200,
        fork_engine="sglang",
    )


class TestSGLangConformance(SnapshotRestoreConformance):
    pass
