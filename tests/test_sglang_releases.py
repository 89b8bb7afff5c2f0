"""Which SGLang releases the adapter accepts, and what it knows of each (no engine needed)."""

import pytest

from thaw.adapters.sglang import SUPPORTED_RANGES
from thaw.adapters.sglang.engine_access import internals_of
from thaw.core import EngineUnsupported


@pytest.mark.parametrize("version", ["0.5.14", "0.5.14.post1", "0.5.20", "0.5.21", "0.5.21+cpu"])
def test_supported_releases_have_a_line(version):
    line = internals_of(version)
    assert line.tree_core == (not version.startswith("0.5.14"))


@pytest.mark.parametrize("version", ["0.5.13", "0.5.15", "0.5.18", "0.5.22", "0.6.0", "1.0.0"])
def test_other_releases_are_refused_naming_the_lines(version):
    with pytest.raises(EngineUnsupported, match=rf"SGLang {version} is outside .*\[0\.5\.14, 0\.5\.15\)"):
        internals_of(version)


def test_the_public_ranges_are_the_table():
    assert SUPPORTED_RANGES == (((0, 5, 14), (0, 5, 15)), ((0, 5, 20), (0, 5, 22)))
