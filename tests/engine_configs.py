"""The engines the adapter tests run, on the built-in tiny model, as the suite sees them."""

from pathlib import Path

from thaw.conformance import EngineUnderTest
from thaw.core.registry import driver_spec, register_adapter
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "paged_server"
# The example server, registered as a third-party engine would be (its package on the path).
register_adapter("paged_server", "paged_server.thaw_adapter:attach", driver="paged_server.driver:PagedServerDriver")
PAGE_SIZES = {"vllm": 32, "sglang": 1, "paged_server": 16}


def tiny_models(directory: Path) -> tuple[str, str]:
    """The tiny model and one of another shape (3 layers) for mismatch checks."""
    return (str(build_tiny_llama(directory / "tiny")),
            str(build_tiny_llama(directory / "other", TinyLlama(num_hidden_layers=3))))


def engine_under_test(name: str, models: tuple[str, str], prompt: list[int], **kw) -> EngineUnderTest:
    """`name` serving the tiny model; restore targets run dummy weights; another dtype and
    another model must be refused."""
    model, other = models
    retrained = build_tiny_llama(Path(model).parent / "retrained", TinyLlama(seed=1))  # same shape, other weights
    return EngineUnderTest(
        driver=driver_spec(name), config={"model": model}, fresh_config={"load_format": "dummy"},
        mismatches={"dtype": ({"dtype": "bfloat16"}, "dtype"),
                    "model": ({"model": other}, "model_config_digest")},
        other_weights={"model": str(retrained)}, prompt=prompt, page_size=PAGE_SIZES[name],
        fork_engine=name,
        **kw)
