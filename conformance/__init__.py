"""The conformance suite every thaw adapter plugs into (installed as ``thaw.conformance``).

An adapter's test module provides one fixture, ``engine_under_test``, returning an
:class:`EngineUnderTest`, and mixes :class:`SnapshotRestoreConformance` into a test
class. Every check uses the engine itself as the oracle: its reported cached-token
counts and its own generated tokens, in fresh engines in other processes.
:class:`CrossEngineConformance` takes two engines (fixtures ``source`` and ``target``)
and restores one's snapshot into the other.
"""

from .cross import CrossEngineConformance
from .harness import EngineUnderTest, Trunk
from .suite import SnapshotRestoreConformance

__all__ = ["EngineUnderTest", "Trunk", "SnapshotRestoreConformance", "CrossEngineConformance"]
