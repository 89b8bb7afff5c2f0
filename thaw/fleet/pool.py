"""A pool of started engines that fork one snapshot into many branches on demand.

`EnginePool(engine, config, size, placement)` starts `size` engines once (in parallel) and
keeps them; `fork(snapshot, branches)` spreads the branches over the engines in contiguous
blocks, and each engine restores the trunk (pages it already holds are not written again; the
snapshot's weights only on an engine's first restore, later snapshots must carry the same
weights, which the restore checks by digest) and generates its block in one batch (driver op `generate_many`, branch i sampled with seed
`seed + i`). The same pool runs on one machine (`LocalPlacement`) or a Ray cluster
(`RayPlacement`): the placement only says where engines live.

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

from thaw.core.errors import ThawError

from .placement import Engine, EngineLost, LocalPlacement

DRIVERS = {"vllm": "thaw.adapters.vllm.driver:VLLMDriver",
           "sglang": "thaw.adapters.sglang.driver:SGLangDriver"}
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


class EnginePool:
    """`size` started engines of one kind and config (see the module docstring). `engine`
    is "vllm", "sglang" or a driver spec "module:Class"; `on_event(kind, info)` is called
    from the pool's threads at each step ("started", "restore", "generate", "lost",
    "replaced", "block_done"), e.g. to show progress."""

    def __init__(self, engine: str, config: dict[str, Any], size: int, *, placement: Any = None,
                 on_event: Optional[EventFn] = None, max_retries: int = 2) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one engine, not {size}")
        self.driver = DRIVERS.get(engine, engine)
        if ":" not in self.driver:
            raise ValueError(f"unknown engine {engine!r}; known: {sorted(DRIVERS)}, or 'module:Class'")
        self.config, self.placement = dict(config), placement or LocalPlacement()
        self.on_event, self.max_retries = on_event or (lambda kind, info: None), max_retries
        self._names = iter(f"engine-{i}" for i in range(1 << 30))
        self._lock = threading.Lock()
        self.engines: list[Engine] = self._start(size)
        self.replaced = 0
        self._has_weights: set[str] = set()  # engines whose weights a restore has loaded

    def _start(self, n: int) -> list[Engine]:
        engines = [self.placement.start(next(self._names), self.driver, self.config) for _ in range(n)]
        for engine in engines:
            self.placement.wait_ready(engine)
            self.on_event("started", {"engine": engine.name})
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

    def _run_block(self, slot: int, block: tuple[int, int], job: dict[str, Any]) -> list[Branch]:
        first, end = block
        last_error: Optional[BaseException] = None
        for attempt in range(1, self.max_retries + 2):
            engine = self.engines[slot]
            try:
                return self._block_on(engine, first, end, job, attempt)
            except EngineLost as exc:
                last_error = exc
                self.on_event("lost", {"engine": engine.name, "branches": [first, end], "error": str(exc)})
                if attempt > self.max_retries:
                    break
                replacement = self._start(1)[0]
                with self._lock:
                    self.engines[slot] = replacement
                    self.replaced += 1
                self.on_event("replaced", {"engine": engine.name, "by": replacement.name})
        raise FleetError(f"branches {first}..{end - 1} lost {self.max_retries + 1} engines in a row; "
                         f"last: {last_error}")

    def _block_on(self, engine: Engine, first: int, end: int, job: dict[str, Any], attempt: int) -> list[Branch]:
        self.on_event("restore", {"engine": engine.name, "branches": [first, end]})
        t0 = time.perf_counter()
        engine.call("restore", path=job["snapshot"], requests=False, weights=engine.name not in self._has_weights)
        restored = time.perf_counter() - t0
        with self._lock:
            self._has_weights.add(engine.name)
        self.on_event("generate", {"engine": engine.name, "branches": [first, end]})
        t0 = time.perf_counter()
        out = engine.call("generate_many", prompt_token_ids=job["prompt"], n=end - first,
                          max_tokens=job["max_tokens"], temperature=job["temperature"], seed=job["seed"] + first)
        generated = time.perf_counter() - t0
        self.on_event("block_done", {"engine": engine.name, "branches": [first, end]})
        return [Branch(first + i, job["seed"] + first + i, tokens, out["cached_tokens"][i], engine.name, attempt,
                       restored, generated) for i, tokens in enumerate(out["tokens"])]

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.engines = []

    def __enter__(self) -> "EnginePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
