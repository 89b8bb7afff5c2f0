"""The restore transaction every adapter runs (`thaw.core.restore`), on a small paged store
written for this test: the steps' order, refusals before the first change, rollback after
it, and the weights-swap rule (running requests refused, the cache dropped, a failed load
recorded as `WeightsInconsistent`)."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch

from thaw.core import ChecksumError, IdentityMismatch, KVLayout, ThawError
from thaw.core.engine_weights import EngineWeights
from thaw.core.errors import WeightsInconsistent
from thaw.core.restore import RestoreHooks, RestorePlan, run_restore

from .helpers import small_snapshot


class PagedStore:
    """An engine's KV as slots of pages, a prefix cache naming some of them, and weights."""

    def __init__(self, snap, slots: int = 16) -> None:
        self.identity = snap.identity
        self.layout = snap.kv.layout
        self.slots: list[Optional[torch.Tensor]] = [None] * slots
        self.cache: dict[int, int] = {100: 0}  # prefix id -> slot (one page cached before the restore)
        self.weights: dict[str, torch.Tensor] = {}
        self.running: list[str] = []
        self.weights_record = EngineWeights()  # what the transaction reports weights loads to


class Placement:
    def __init__(self, store: PagedStore, plan: RestorePlan, log: list[str], fail_write: bool) -> None:
        self.store, self.plan, self.log, self.fail_write = store, plan, log, fail_write
        self.taken: list[int] = []
        self.pages: list[torch.Tensor] = []

    def stage(self) -> None:
        self.log.append("kv.stage")
        self.pages = [layer.tensor() for layer in self.plan.snap.kv.layers]  # CRC-checked

    def allocate(self) -> None:
        self.log.append("kv.allocate")
        free = [i for i, s in enumerate(self.store.slots) if s is None and i not in self.store.cache.values()]
        self.taken = free[: self.plan.snap.kv.num_pages]
        for i in self.taken:
            self.store.slots[i] = torch.zeros(1)

    def write(self) -> None:
        self.log.append("kv.write")
        if self.fail_write:
            raise ChecksumError("section 'kv/0'", 1, 2)
        for page, slot in enumerate(self.taken):
            self.store.slots[slot] = self.pages[0][page]

    def register(self) -> None:
        self.log.append("kv.register")
        for page, slot in enumerate(self.taken):
            self.store.cache[page] = slot

    def rollback(self) -> None:
        self.log.append("kv.rollback")
        for slot in self.taken:
            if slot not in self.store.cache.values():
                self.store.slots[slot] = None
        self.taken = []


class Load:
    route = "host"

    def __init__(self, store: PagedStore, plan: RestorePlan, log: list[str], fail: bool) -> None:
        self.store, self.plan, self.log, self.fail = store, plan, log, fail
        self.staged: dict[str, torch.Tensor] = {}

    def stage(self) -> None:
        self.log.append("weights.stage")
        self.staged = {k: v.tensor() for k, v in self.plan.snap.weights.items()}

    def commit(self) -> int:
        self.log.append("weights.commit")
        for i, (name, t) in enumerate(self.staged.items()):
            if self.fail and i == 1:
                raise RuntimeError("shape mismatch in the second tensor")
            self.store.weights[name] = t
        return len(self.staged)

    def release(self) -> None:
        self.log.append("weights.release")
        self.staged = {}


class StoreHooks(RestoreHooks):
    weights_formats = ("checkpoint",)

    def __init__(self, store: PagedStore, *, fail_write: bool = False, fail_load: bool = False) -> None:
        self.store, self.log = store, []
        self.engine_weights = store.weights_record
        self.fail_write, self.fail_load = fail_write, fail_load

    def identity(self):
        return self.store.identity

    def kv_layout(self) -> KVLayout:
        return self.store.layout

    def weights_digest(self, weights_format: str) -> str:
        return self.store.identity.weights_digest

    def live_request_ids(self) -> list[str]:
        return list(self.store.running)

    def place_kv(self, plan: RestorePlan) -> Placement:
        self.log.append("place_kv")
        return Placement(self.store, plan, self.log, self.fail_write)

    def load_weights(self, plan: RestorePlan) -> Load:
        self.log.append("load_weights")
        return Load(self.store, plan, self.log, self.fail_load)

    def prepare_requests(self, plan: RestorePlan) -> Any:
        self.log.append("prepare_requests")
        return [r.request_id for r in plan.snap.requests]

    def resume_requests(self, plan: RestorePlan, prepared: Any) -> Any:
        self.log.append("resume_requests")
        self.store.running.extend(prepared)
        return prepared

    def drop_cached(self) -> None:
        self.log.append("drop_cached")
        self.store.cache = {k: v for k, v in self.store.cache.items() if k != 100}


def _state(store: PagedStore) -> tuple:
    return (dict(store.cache), [s is None for s in store.slots], sorted(store.weights), list(store.running))


def test_the_steps_run_in_order_and_time_every_phase():
    snap = small_snapshot()
    store = PagedStore(snap)
    hooks = StoreHooks(store)
    out = run_restore(hooks, snap)
    assert hooks.log == ["place_kv", "load_weights", "prepare_requests", "weights.stage", "kv.stage",
                         "kv.allocate", "kv.write", "weights.commit", "drop_cached", "kv.register",
                         "resume_requests"]
    assert list(out.seconds) == ["checks", "weights_stage", "kv_stage", "kv_allocate", "kv", "weights", "requests"]
    assert out.weights_loaded == 2 and out.weights_route == "host" and out.resumed == ["r0"]
    assert 100 not in store.cache and len(store.cache) == snap.kv.num_pages  # the old weights' page dropped


def test_kept_weights_keep_the_cache_and_skip_the_load():
    snap = small_snapshot()
    snap.identity.weights_digest = "d" * 64
    store = PagedStore(snap)
    hooks = StoreHooks(store)
    out = run_restore(hooks, snap, weights=False, requests=False)
    assert "load_weights" not in hooks.log and "drop_cached" not in hooks.log and out.resumed is None
    assert store.cache[100] == 0


def refused_unchanged(store: PagedStore, snap, error: type, match: str, **options: Any) -> None:
    """The restore is refused with `error` before any hook that changes the engine runs."""
    before = _state(store)
    hooks = StoreHooks(store)
    with pytest.raises(error, match=match):
        run_restore(hooks, snap, **options)
    assert hooks.log == [] and _state(store) == before


def test_a_mismatch_is_refused_before_any_hook_that_changes_the_engine():
    snap = small_snapshot()
    store = PagedStore(snap)
    store.identity = small_snapshot().identity
    store.identity.num_layers = 3
    refused_unchanged(store, snap, IdentityMismatch, "num_layers")


def test_kept_weights_of_unknown_digest_are_refused():
    snap = small_snapshot()
    refused_unchanged(PagedStore(snap), snap, IdentityMismatch, "weights_digest", weights=False)


def test_a_weights_swap_is_refused_while_requests_run_on_the_old_weights():
    snap = small_snapshot()
    store = PagedStore(snap)
    store.running = ["live-7"]
    refused_unchanged(store, snap, ThawError, "live-7")


def test_a_bad_page_after_the_first_change_rolls_back_and_releases():
    snap = small_snapshot()
    store = PagedStore(snap)
    before = _state(store)
    hooks = StoreHooks(store, fail_write=True)
    with pytest.raises(ChecksumError):
        run_restore(hooks, snap)
    assert hooks.log[-3:] == ["kv.write", "weights.release", "kv.rollback"]
    assert _state(store) == before


def test_a_load_that_fails_partway_drops_the_cache_and_says_so_until_weights_come():
    snap = small_snapshot()
    store = PagedStore(snap)
    hooks = StoreHooks(store, fail_load=True)
    with pytest.raises(WeightsInconsistent, match="failed partway .*RuntimeError: shape mismatch"):
        run_restore(hooks, snap)
    assert "drop_cached" in hooks.log and hooks.log[-2:] == ["weights.release", "kv.rollback"]
    assert 100 not in store.cache and store.weights_record.inconsistent
    snap.identity.weights_digest = "d" * 64
    with pytest.raises(WeightsInconsistent, match="this restore brings no weights"):
        run_restore(StoreHooks(store), snap, weights=False)
    run_restore(StoreHooks(store), snap, requests=False)  # a restore with weights clears it
    assert store.weights_record.inconsistent is None and store.weights_record.known
