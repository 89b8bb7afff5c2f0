"""The driver protocol: what an engine exposes to a worker process (`thaw.workers`).

A driver is a class built in its own process from a JSON config (``Driver(config)``) whose
methods take and return JSON-able values; `EngineWorker.call(op, **args)` calls them from
another process, and conformance (`thaw.conformance`), `thaw.fork` and `thaw.fleet` drive
engines through them alone. Every driver implements `EngineDriver`; `InFlightDriver` adds
the in-flight requests of engines that carry them (`EngineUnderTest.carries_requests`),
`ReferencingDriver` the snapshot options `EngineUnderTest.references_weights` names, and
`PreparingDriver` the readying of a file restores start from (fleets, fork servers), and
`CapturingDriver` the in-memory capture of the `EngineAdapter` contract.
Return values: `generate` gives ``{"tokens", "cached_tokens", "seconds"}``; `state` what a
refused restore must leave unchanged; `snapshot` and `restore` the adapter's report.
`missing_methods(cls, protocol)` says what a class lacks (tests check every driver with it).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Protocol


class EngineDriver(Protocol):
    def __init__(self, config: dict[str, Any]) -> None:
        """Builds and starts the engine the config describes (in the worker's process)."""

    def info(self) -> dict[str, Any]:
        """The engine's identity and versions, for reports."""

    def generate(self, prompt_token_ids: list[int], max_tokens: int, temperature: float = 0.0,
                 seed: Optional[int] = None) -> dict[str, Any]:
        """One request to the end: its tokens, how many prompt tokens were cache hits, seconds."""

    def state(self) -> dict[str, Any]:
        """What a refused restore must leave exactly as it was (cache, free blocks, requests)."""

    def snapshot(self, path: str, weights: bool = True) -> dict[str, Any]:
        """Writes the engine's state to `path` atomically."""

    def restore(self, path: str, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> dict[str, Any]:
        """Restores the snapshot at `path` (`thaw.core.restore`); returns the report."""


class InFlightDriver(EngineDriver, Protocol):
    def add_request(self, request_id: str, prompt_token_ids: list[int], max_tokens: int,
                    temperature: float = 0.0, seed: Optional[int] = None) -> None:
        """Queues a request without running it."""

    def step(self, n: int = 1) -> None:
        """Runs `n` engine steps."""

    def finish(self) -> dict[str, list[int]]:
        """Runs every request to the end; each one's whole output, resumed ones included."""


class ReferencingDriver(EngineDriver, Protocol):
    def snapshot(self, path: str, weights: bool = True, weights_from: Optional[str] = None,
                 direct: bool = False, recycle: Optional[str] = None) -> dict[str, Any]:
        """`weights_from`: weights referenced from that snapshot file; `direct`: written past
        the page cache; `recycle`: written into that retired snapshot's file."""


class PreparingDriver(EngineDriver, Protocol):
    def prepare(self, path: str, kv_on_device: bool = False) -> float:
        """Readies restores from `path` (opened, registered, KV kept on the device); seconds."""


class CapturingDriver(EngineDriver, Protocol):
    def capture(self, weights: bool = True) -> dict[str, Any]:
        """The handle's in-memory capture (`EngineAdapter.capture`), kept for `restore_captured`;
        returns ``{"adapter": the handle is an EngineAdapter, "requests", "tree_tokens", "pages"}``."""

    def restore_captured(self, weights: bool = True) -> dict[str, Any]:
        """Restores the last `capture` from memory (`EngineAdapter.restore` of a StateSnapshot)."""


def missing_methods(cls: type, protocol: type) -> list[str]:
    """What `cls` lacks of `protocol`: methods it does not define, and parameters of the
    protocol's methods its methods do not take (by name); empty when it conforms."""
    missing = []
    for name, member in inspect.getmembers(protocol, inspect.isfunction):
        if name.startswith("_") and name != "__init__":
            continue
        mine = getattr(cls, name, None)
        if mine is None or not callable(mine):
            missing.append(name)
            continue
        wanted = list(inspect.signature(member).parameters)[1:]
        taken = inspect.signature(mine).parameters
        if any(p.kind is p.VAR_KEYWORD for p in taken.values()):
            continue
        absent = [p for p in wanted if p not in taken]
        if absent:
            missing.append(f"{name}({', '.join(absent)})")
    return missing
