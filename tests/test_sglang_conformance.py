"""The shared conformance suite against real SGLang (0.5.21 on CPU), engines in separate
processes. SGLang's engine runs page size 1 on CPU (larger pages need its GPU allocator);
page sizes > 1 are covered at the cache level in test_sglang_cache.py."""

import pytest

from thaw.conformance import SnapshotRestoreConformance

from .engine_configs import engine_under_test as tiny_engine, tiny_models
from .engines import needs_sglang

pytestmark = [needs_sglang, pytest.mark.engine]


@pytest.fixture(scope="module")
def engine_under_test(tmp_path_factory):
    # SGLang runs batches on its own; a long request stays in flight while the driver
    # pauses the engine after a few tokens.
    return tiny_engine("sglang", tiny_models(tmp_path_factory.mktemp("models")),
                       prompt=[4 + (i * 37) % 500 for i in range(300)], inflight_max_tokens=200)


class TestSGLangConformance(SnapshotRestoreConformance):
    pass
