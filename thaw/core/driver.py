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
`HandleDriver` is what every adapter's driver does the same way over its handle.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Optional, Protocol

from .adapter import EngineAdapter


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


class HandleDriver:
    """The part of a driver that is the same for every adapter, over `self.handle` (an
    `EngineAdapter` with `prepare`, which the subclass attaches): readying files, the
    in-memory capture and its restore, and the shape of snapshot and restore reports
    (`timed`). `run(value)` gives what a handle method returned: the value itself, or, for
    an asynchronous handle, the awaited result (its driver overrides `run`)."""

    handle: Any
    captured: Any = None

    def run(self, value: Any) -> Any:
        return value

    def report(self, value: Any) -> dict[str, Any]:
        """A handle's report as a new JSON-able dict."""
        value = self.run(value)
        return dict(value) if isinstance(value, dict) else value.to_json()

    def timed(self, call: Callable[[], Any]) -> dict[str, Any]:
        """`call()`'s report with `seconds` (what the call took here), `seconds_core` (what
        the engine spent on it: its own figure where it reports one number, else the same)
        and `seconds_by_phase` (where the report has phases)."""
        t0 = time.perf_counter()
        report = self.report(call())
        waited = time.perf_counter() - t0
        core = report.pop("seconds", None)
        if isinstance(core, dict):
            report["seconds_by_phase"], core = core, None
        return {**report, "seconds": waited, "seconds_core": waited if core is None else core}

    def prepare(self, path: str, kv_on_device: bool = False) -> float:
        return self.run(self.handle.prepare(path, kv_on_device=kv_on_device))

    def capture(self, weights: bool = True) -> dict[str, Any]:
        """The handle's in-memory capture (`EngineAdapter.capture`), kept for `restore_captured`."""
        self.captured = self.run(self.handle.capture(weights=weights, requests=False))
        return {"adapter": isinstance(self.handle, EngineAdapter), "requests": len(self.captured.requests),
                "tree_tokens": self.captured.prefix.num_tokens, "pages": self.captured.kv.num_pages}

    def restore_captured(self, weights: bool = True) -> dict[str, Any]:
        """Restores the last `capture` from memory (`EngineAdapter.restore` of a StateSnapshot)."""
        return self.report(self.handle.restore(self.captured, weights=weights, requests=False))


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
