"""A pool of started engines that fork one snapshot into many branches on demand.

`EnginePool(engine, config, size, placement)` starts `size` engines once (in parallel) and
keeps them; `fork(snapshot, branches)` spreads the branches over the engines in contiguous
blocks, and each engine restores the trunk (pages it already holds are not written again; the
snapshot's weights only on an engine's first restore, later snapshots must carry the same
weights, which the restore checks by digest) and generates its block in one batch (driver op `generate_many`, branch i sampled with seed
`seed + i`). The same pool runs on one machine (`LocalPlacement`) or a Ray cluster
(`RayPlacement`): the placement only says where engines live.

A warm pool serves single requests too: `prepare(snapshot)` readies every engine ahead (the
file opened and, on a GPU, registered; weights and the trunk's pages restored; with
`kv_on_device` the trunk's pages also kept on the device), then `request(snapshot, prompt)`
takes the first idle engine, preferring one prepared for that snapshot, restores the trunk
there (pages still held are not written again) and generates, returning a `Served` with its
phases. Each engine runs one call at a time: a request waits for an idle one, a fork's block
for its own engine.

Fault tolerance by re-running lost work: when an engine dies during a call (`EngineLost`),
it is replaced by a freshly started one and its whole block re-runs there with the same
seeds, so every branch comes back exactly once. A block that loses `max_retries` engines in
a row fails the call (`FleetError`) naming the block and the last error.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from thaw.core.registry import driver_spec
from thaw.core.errors import ThawError

from .placement import Engine, EngineLost, LocalPlacement

EventFn = Callable[[str, dict[str, Any]], None]


class FleetError(ThawError):
    """A fork call could not complete every branch."""


@dataclass
class Branch:
    """One branch of a fork: its tokens, the cache hit its engine reported, and where it ran."""

    index: int
    seed: int
    tokens: list[int]
    cached_tokens: int
    engine: str
    attempts: int  # 1, or more when its engine died and the block re-ran
    restore_seconds: float  # the trunk's restore on that engine (0 when already restored)
    generate_seconds: float  # the block's batched generation, shared by its branches

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Served:
    """One request served by a pool engine, with where its time went."""

    tokens: list[int]
    cached_tokens: int
    engine: str
    attempts: int  # 1, or more when its engine died and the request re-ran on a replacement
    wait_seconds: float  # until an engine was idle
    restore_seconds: float  # the trunk's restore (weights too on an engine's first restore)
    generate_seconds: float
    seconds: float  # request to reply, all of the above included

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class EnginePool:
    """`size` started engines of one kind and config (see the module docstring). `engine`
    is "vllm", "sglang" or a driver spec "module:Class"; `on_event(kind, info)` is called
    from the pool's threads at each step ("started", "restore", "generate", "lost",
    "replaced", "block_done", "prepared", "served"), e.g. to show progress."""

    def __init__(self, engine: str, config: dict[str, Any], size: int, *, placement: Any = None,
                 on_event: Optional[EventFn] = None, max_retries: int = 2) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one engine, not {size}")
        self.driver = driver_spec(engine)
        self.config, self.placement = dict(config), placement or LocalPlacement()
        self.on_event, self.max_retries = on_event or (lambda kind, info: None), max_retries
        self._names = iter(f"engine-{i}" for i in range(1 << 30))
        self._lock = threading.Lock()
        try:
            self.engines: list[Engine] = self._start(size)
        except BaseException:  # no pool to close: stop what the placement started for it (a zygote)
            self.placement.close()
            raise
        self.replaced = 0
        self._has_weights: set[str] = set()  # engines whose weights a restore has loaded
        self._prepared: dict[str, str] = {}  # engine name -> the snapshot it was prepared for
        self._idle = threading.Condition(self._lock)
        self._busy: set[int] = set()  # slots running a call

    def _start(self, n: int) -> list[Engine]:
        """`n` started engines; if one fails to start, every one started here is stopped
        before the error propagates (none is left running)."""
        engines: list[Engine] = []
        try:
            for _ in range(n):
                engines.append(self.placement.start(next(self._names), self.driver, self.config))
            for engine in engines:
                self.placement.wait_ready(engine)
                self.on_event("started", {"engine": engine.name})
        except BaseException:
            for engine in engines:
                engine.close()
            raise
        return engines

    def fork(self, snapshot: str, branches: int, *, prompt: Optional[list[int]] = None, max_tokens: int = 16,
             temperature: float = 1.0, seed: int = 0) -> list[Branch]:
        """`branches` continuations of `prompt` (default: the snapshot's longest cached
        path) restored from `snapshot` (a path every engine can read, or a URL), in
        branch order."""
        from thaw.fork import trunk_tokens

        if branches < 1:
            raise ValueError(f"fork needs at least one branch, not {branches}")
        prompt = prompt if prompt is not None else trunk_tokens(snapshot)
        slots = len(self.engines)
        blocks = [(k * branches // slots, (k + 1) * branches // slots) for k in range(slots)]
        blocks = [(a, b) for a, b in blocks if b > a]
        job = dict(snapshot=str(snapshot), prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)
        with ThreadPoolExecutor(max_workers=len(blocks)) as pool:
            done = list(pool.map(lambda kb: self._run_block(kb[0], kb[1], job), enumerate(blocks)))
        out = [b for block in done for b in block]
        if [b.index for b in out] != list(range(branches)):
            raise FleetError(f"internal: branches {sorted(b.index for b in out)} came back for {branches}")
        return out

    def prepare(self, snapshot: str, *, kv_on_device: bool = False) -> dict[str, float]:
        """Readies every engine, in parallel, to serve `snapshot` at once: `kv_on_device`
        first keeps its pages on the device (the driver's `prepare`; vLLM and SGLang on CUDA),
        then a restore opens the file (registering it on a GPU) and loads the weights (on an
        engine's first restore; later snapshots must carry the same weights) and the trunk's
        pages. Returns the seconds each engine took, by name."""
        def ready(slot: int) -> tuple[str, float]:
            def on(engine: Engine, attempt: int) -> tuple[str, float]:
                t0 = time.perf_counter()
                if kv_on_device:
                    engine.call("prepare", path=str(snapshot), kv_on_device=True)
                self._restore_on(engine, str(snapshot))
                with self._lock:
                    self._prepared[engine.name] = str(snapshot)
                self.on_event("prepared", {"engine": engine.name, "snapshot": str(snapshot)})
                return engine.name, time.perf_counter() - t0
            return self._holding(slot, f"preparing {snapshot}", on)

        with ThreadPoolExecutor(max_workers=len(self.engines)) as pool:
            return dict(pool.map(ready, range(len(self.engines))))

    def request(self, snapshot: str, prompt: Optional[list[int]] = None, *, max_tokens: int = 16,
                temperature: float = 0.0, seed: Optional[int] = None) -> Served:
        """One continuation of `prompt` (default: the snapshot's longest cached path) on the
        first idle engine, preferring one prepared for `snapshot`; the trunk is restored there
        first (see the module docstring). Safe to call from many threads at once."""
        from thaw.fork import trunk_tokens

        prompt = prompt if prompt is not None else trunk_tokens(snapshot)
        t0 = time.perf_counter()
        slot = self._take_idle(str(snapshot))
        waited = time.perf_counter() - t0

        def on(engine: Engine, attempt: int) -> Served:
            restored = self._restore_on(engine, str(snapshot))
            t1 = time.perf_counter()
            out = engine.call("generate", prompt_token_ids=prompt, max_tokens=max_tokens,
                              temperature=temperature, seed=seed)
            served = Served(out["tokens"], out["cached_tokens"], engine.name, attempt, waited, restored,
                            time.perf_counter() - t1, time.perf_counter() - t0)
            self.on_event("served", {"engine": engine.name, "seconds": served.seconds})
            return served
        return self._holding(slot, f"a request on {snapshot}", on, taken=True)

    def _restore_on(self, engine: Engine, snapshot: str) -> float:
        t0 = time.perf_counter()
        engine.call("restore", path=snapshot, requests=False, weights=engine.name not in self._has_weights)
        with self._lock:
            self._has_weights.add(engine.name)
        return time.perf_counter() - t0

    def _take_idle(self, snapshot: str) -> int:
        """Waits for an idle slot, one prepared for `snapshot` first, and marks it busy."""
        with self._idle:
            while len(self._busy) == len(self.engines):
                self._idle.wait()
            idle = [k for k in range(len(self.engines)) if k not in self._busy]
            slot = next((k for k in idle if self._prepared.get(self.engines[k].name) == snapshot), idle[0])
            self._busy.add(slot)
            return slot

    def _holding(self, slot: int, what: str, fn: Callable[[Engine, int], Any], *, taken: bool = False) -> Any:
        """Runs `fn(engine, attempt)` on the engine in `slot`, holding the slot (waiting for
        it unless `taken`), and re-runs it on a fresh replacement when the engine dies."""
        with self._idle:
            while not taken and slot in self._busy:
                self._idle.wait()
            self._busy.add(slot)
        try:
            last_error: Optional[BaseException] = None
            for attempt in range(1, self.max_retries + 2):
                engine = self.engines[slot]
                try:
                    return fn(engine, attempt)
                except EngineLost as exc:
                    last_error = exc
                    self.on_event("lost", {"engine": engine.name, "work": what, "error": str(exc)})
                    if attempt > self.max_retries:
                        break
                    engine.close()  # what is left of it: its process, its log
                    replacement = self._start(1)[0]
                    with self._lock:
                        self.engines[slot] = replacement
                        self.replaced += 1
                    self.on_event("replaced", {"engine": engine.name, "by": replacement.name})
            raise FleetError(f"{what} lost {self.max_retries + 1} engines in a row; last: {last_error}")
        finally:
            with self._idle:
                self._busy.discard(slot)
                self._idle.notify_all()

    def _run_block(self, slot: int, block: tuple[int, int], job: dict[str, Any]) -> list[Branch]:
        first, end = block
        return self._holding(slot, f"branches {first}..{end - 1}",
                             lambda engine, attempt: self._block_on(engine, first, end, job, attempt))

    def _block_on(self, engine: Engine, first: int, end: int, job: dict[str, Any], attempt: int) -> list[Branch]:
        self.on_event("restore", {"engine": engine.name, "branches": [first, end]})
        restored = self._restore_on(engine, job["snapshot"])
        self.on_event("generate", {"engine": engine.name, "branches": [first, end]})
        t0 = time.perf_counter()
        out = engine.call("generate_many", prompt_token_ids=job["prompt"], n=end - first,
                          max_tokens=job["max_tokens"], temperature=job["temperature"], seed=job["seed"] + first)
        generated = time.perf_counter() - t0
        self.on_event("block_done", {"engine": engine.name, "branches": [first, end]})
        return [Branch(first + i, job["seed"] + first + i, tokens, out["cached_tokens"][i], engine.name, attempt,
                       restored, generated) for i, tokens in enumerate(out["tokens"])]

    def close(self) -> None:
        """Stops the engines, then whatever the placement started for them."""
        for engine in self.engines:
            engine.close()
        self.engines = []
        self.placement.close()

    def __enter__(self) -> "EnginePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
