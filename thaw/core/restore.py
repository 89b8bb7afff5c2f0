"""The restore transaction: the steps every engine's restore takes, in order, written once.

`run_restore(engine, snap, ...)` drives an adapter's `RestoreHooks` through six steps, each
timed under its name in `RestoreOutcome.seconds`:

1. ``checks``: only looks. The model first (`fields` other than the page size), then the
   snapshot re-cut to the engine's page size (`fit_for_restore`); a weights load that
   failed partway earlier (only a restore with weights may follow it); the weights (a
   loaded format the engine takes, or kept weights whose digest equals the snapshot's);
   the KV layout's shape; when weights are loaded, no request still running on the old ones
   (`weights_swap`); then the engine's own checks (`check`), the KV placement (`place_kv`:
   capacity) and the weights load (`load_weights`: route), built without changing anything.
2. ``weights_stage`` and ``kv_stage``: every byte the engine will use is read and
   CRC-checked where it can be before the first change (`WeightsLoad.stage`,
   `KVPlacement.stage`). A failure releases what was staged; the engine is as it was.
3. ``kv_allocate``: `KVPlacement.allocate`, the first change: fresh blocks/slots, none
   reachable from the prefix index yet; ``kv``: `write` fills them.
4. ``weights``: `WeightsLoad.commit`; then every cached prefix the engine held is dropped
   (`drop_cached`: it was computed with the old weights; the restore's own pages are
   registered after), and the engine's weights record (`engine_weights`) takes the
   snapshot's. A load that fails partway drops them too, records the failure there and
   raises `WeightsInconsistent`.
5. ``requests``: `KVPlacement.register` (the restored pages become cache hits), then
   `resume_requests`.

Any failure after the first change rolls the placement back (`KVPlacement.rollback`) and
releases the staged weights before the error propagates.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from .engine_weights import EngineWeights
from .errors import IdentityMismatch, WeightsInconsistent
from .kv_layout import KVLayout
from .phase_clock import PhaseClock
from .recut import fit_for_restore
from .schema import MATCH_FIELDS, Identity, StateSnapshot, check_kv_weights, check_weights_format
from .weights_swap import failed_partway, refuse_requests_on_old_weights



class KVPlacement(Protocol):
    """Where one restore's KV pages go in the engine. Built by `RestoreHooks.place_kv`, which
    only looks (and refuses when the engine has no room); then, in this order:"""

    def stage(self) -> None:
        """Before the first change: reads and checks what can be checked now (may do nothing)."""

    def allocate(self) -> None:
        """The first change: takes fresh blocks/slots the prefix index does not name yet."""

    def write(self) -> None:
        """Fills the allocated blocks; raises `ChecksumError` on a bad byte (rolled back)."""

    def register(self) -> None:
        """Makes the written pages prefix-cache hits: the commit of the KV."""

    def rollback(self) -> None:
        """Undoes whatever `stage`, `allocate`, `write` did; a no-op once registered."""


class WeightsLoad(Protocol):
    """One restore's weights, built by `RestoreHooks.load_weights` (checks only)."""

    route: Optional[str]  # the way the weights take, known once staged (reported)

    def stage(self) -> None:
        """Reads and verifies every weight byte; the engine is not touched."""

    def commit(self) -> int:
        """Puts the staged weights into the model; returns how many tensors were loaded."""

    def release(self) -> None:
        """Frees what `stage` held; safe to call more than once and after a failure."""


@dataclass
class RestorePlan:
    """What the checks decided, handed to the hooks that build the placement and loads."""

    snap: StateSnapshot  # re-cut to the engine's page size where it had another
    layout: KVLayout  # the engine's
    load_weights: bool  # the snapshot's weights replace the engine's
    resume: bool  # in-flight requests are resumed
    reuse_cached: bool  # pages the engine already caches may be kept (never after a weights swap)


@dataclass
class RestoreOutcome:
    snap: StateSnapshot  # as restored (re-cut where needed)
    recut: Optional[dict[str, Any]]  # the re-cut's report, None when none was needed
    identity_differences: dict[str, Any]  # reported, not refused
    weights_loaded: int = 0
    weights_route: Optional[str] = None
    resumed: Any = None  # what `resume_requests` returned
    seconds: dict[str, float] = field(default_factory=dict)


class RestoreHooks(ABC):
    """An engine's part of a restore. Every hook runs on the thread that drives the engine,
    between steps, inside one `run_restore`; the ones called before the first change only
    look. `match_fields`, `weights_formats` and `cache_name` say what the engine compares,
    loads and calls its prefix cache; `engine_weights`, what its weights are known to be
    (`thaw.core.engine_weights`: read by the checks, told of a weights load's outcome)."""

    match_fields: tuple[str, ...] = MATCH_FIELDS
    weights_formats: tuple[str, ...] = ()
    cache_name: str = "prefix cache"
    engine_weights: EngineWeights

    @abstractmethod
    def identity(self) -> Identity:
        """The engine's identity (its weights digest only where already known)."""

    @abstractmethod
    def kv_layout(self) -> KVLayout:
        """The engine's KV layout; asked after the model matched (it may refuse a layout)."""

    @abstractmethod
    def weights_digest(self, weights_format: str) -> str:
        """The digest of the engine's own weights in `weights_format`; "" when unknown."""

    @abstractmethod
    def live_request_ids(self) -> list[str]:
        """Requests running now (a weights swap is refused while any run)."""

    def before_weights_swap(self) -> None:
        """After the live-request refusal, before anything else: may raise while the engine
        is still retiring finished work (the caller asks again)."""

    def check(self, plan: RestorePlan) -> None:
        """The engine's own refusals (request ids, what it cannot resubmit); only looks."""

    @abstractmethod
    def place_kv(self, plan: RestorePlan) -> Optional[KVPlacement]:
        """The placement of `plan.snap`'s KV, None when it has none; raises when it cannot fit."""

    def load_weights(self, plan: RestorePlan) -> WeightsLoad:
        """The weights load (route chosen, nothing read yet); called when `plan.load_weights`."""
        raise NotImplementedError(f"{type(self).__name__} does not load weights")

    def prepare_requests(self, plan: RestorePlan) -> Any:
        """What `resume_requests` needs, built before the first change (refuses bad requests)."""
        return None

    def resume_requests(self, plan: RestorePlan, prepared: Any) -> Any:
        """After the KV is registered: puts the snapshot's requests back; returns what the
        adapter reports. Must undo its own partial work before raising."""
        return None

    @abstractmethod
    def drop_cached(self) -> None:
        """Drops every cached prefix the engine holds (it was computed with other weights)."""


def run_restore(engine: RestoreHooks, snap: StateSnapshot, *, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> RestoreOutcome:
    """Restores `snap` into the engine behind `engine` (see the module's steps)."""
    clock = PhaseClock()
    plan, outcome = _check(engine, snap, weights, requests, trust_unknown_weights)
    engine.check(plan)
    kv = engine.place_kv(plan)
    load = engine.load_weights(plan) if plan.load_weights else None
    prepared = engine.prepare_requests(plan) if plan.resume else None
    clock.lap("checks")
    try:
        if load is not None:
            load.stage()
            outcome.weights_route = load.route
        clock.lap("weights_stage")
        if kv is not None:
            kv.stage()
        clock.lap("kv_stage")
    except BaseException:
        _undo(kv, load)
        raise
    try:
        if kv is not None:
            kv.allocate()
        clock.lap("kv_allocate")
        if kv is not None:
            kv.write()
        clock.lap("kv")
        if load is not None:
            outcome.weights_loaded = _swap_weights(engine, plan, load)
        clock.lap("weights")
        if kv is not None:
            kv.register()
        outcome.resumed = engine.resume_requests(plan, prepared) if plan.resume else None
    except BaseException:
        _undo(kv, load)
        raise
    clock.lap("requests")
    outcome.seconds = clock.seconds
    return outcome


def _check(engine: RestoreHooks, snap: StateSnapshot, weights: bool, requests: bool,
           trust_unknown_weights: bool) -> tuple[RestorePlan, RestoreOutcome]:
    mine = engine.identity()
    # The model first: another model's snapshot is refused as that, before any question
    # about this engine's KV layout (which raises where thaw does not know it).
    engine_layout = functools.cache(engine.kv_layout)  # asked once, and only after the model matched
    snap, recut, differences = fit_for_restore(snap, mine, engine_layout, engine.match_fields)
    layout = engine_layout()
    load_weights = weights and bool(snap.weights)
    inconsistent = engine.engine_weights.inconsistent
    if inconsistent and not load_weights:  # said before the weights check, which it would fail
        raise WeightsInconsistent(f"{inconsistent}; this restore brings no weights")
    if load_weights:
        check_weights_format(snap, engine.weights_formats)
    else:
        check_kv_weights(snap.identity.weights_digest, engine.weights_digest(snap.weights_format),
                         trust_unknown=trust_unknown_weights)
    if snap.kv is not None and not snap.kv.layout.same_shape(layout):
        raise IdentityMismatch("kv layout", snap.kv.layout.to_json(), layout.to_json())
    if load_weights:  # every cached prefix, and every running request, belongs to the old weights
        refuse_requests_on_old_weights(engine.live_request_ids())
        engine.before_weights_swap()
    plan = RestorePlan(snap, layout, load_weights, requests, reuse_cached=not load_weights)
    return plan, RestoreOutcome(snap, recut.to_json() if recut is not None else None, differences)


def _swap_weights(engine: RestoreHooks, plan: RestorePlan, load: WeightsLoad) -> int:
    try:
        loaded = load.commit()
    except BaseException as exc:
        engine.drop_cached()
        error = failed_partway(exc, engine.cache_name)
        engine.engine_weights.failed(str(error))
        raise error from exc
    engine.drop_cached()
    engine.engine_weights.committed(plan.snap)
    return loaded


def _undo(kv: Optional[KVPlacement], load: Optional[WeightsLoad]) -> None:
    if load is not None:
        load.release()
    if kv is not None:
        kv.rollback()
