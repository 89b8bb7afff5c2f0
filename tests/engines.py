"""Which real engines are installed. Tests that need one are skipped with the reason when it
is missing, except where THAW_REQUIRE_ENGINES=1 (CI), where a missing engine fails."""

import importlib.util
import os

import pytest


def require(module: str, install_hint: str):
    """A pytest mark for tests that need `module`."""
    present = importlib.util.find_spec(module) is not None
    if not present and os.environ.get("THAW_REQUIRE_ENGINES") == "1":
        raise RuntimeError(f"THAW_REQUIRE_ENGINES=1 but {module} is not installed ({install_hint})")
    return pytest.mark.skipif(not present, reason=f"{module} is not installed: {install_hint}")


needs_vllm = require("vllm", "run `bash scripts/setup.sh --test --engines`")
needs_sglang = require("sglang", "run `bash scripts/setup.sh --test --engines`")
