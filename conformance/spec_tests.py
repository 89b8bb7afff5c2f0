"""The suite bound to the engine described by THAW_CONFORMANCE_SPEC (see __main__)."""

import json
import os

import pytest

from .harness import EngineUnderTest
from .suite import SnapshotRestoreConformance


@pytest.fixture(scope="module")
def engine_under_test() -> EngineUnderTest:
    spec = json.loads(os.environ["THAW_CONFORMANCE_SPEC"])
    return EngineUnderTest(
        driver=spec["driver"], config=spec["config"], fresh_config=spec["fresh_config"],
        mismatches={n: (o, f) for n, (o, f) in spec["mismatches"].items()},
        prompt=spec["prompt"], page_size=spec["page_size"],
        inflight_max_tokens=spec["inflight_max_tokens"], fork_engine=spec["driver"],
        references_weights=spec.get("references_weights", True))


class TestEngineConformance(SnapshotRestoreConformance):
    pass
