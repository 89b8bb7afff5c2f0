"""Fork a warm engine: N fresh engines, each in its own process, restored from one snapshot.

Each child gets the parent's prefix as a cache hit and then continues with its own
sampling seed, so branches diverge. Engines are named as registered (`thaw.core.adapter.driver_spec`), or given
as a driver spec "module:Class".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Optional

from .core import SchemaError, load
from .core.registry import driver_spec
from .workers import EngineWorker



@dataclass
class ForkChild:
    """One child: its cache hit, time to first token, greedy and sampled continuations."""

    index: int
    seed: Optional[int]
    cached_tokens: int  # reported by the engine for the first request after restore
    ttft_seconds: float  # that first request, one token long
    greedy_tokens: list[int]
    tokens: list[int]  # sampled with `seed`
    restore_seconds: float
    restore_report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def trunk_tokens(snapshot_path: str) -> list[int]:
    """The longest cached token path of a snapshot: what children continue from."""
    snap = load(snapshot_path, verify=False)
    if snap.prefix is None or not snap.prefix.nodes:
        raise SchemaError(f"{snapshot_path} holds no prefix tree to fork from")
    leaf = max(snap.prefix.leaves(), key=lambda n: len(snap.prefix.path(n)[0]))
    return snap.prefix.path(leaf)[0]


def fork(snapshot_path: str, n: int, *, engine: str = "vllm", engine_config: dict[str, Any],
         prompt: Optional[list[int]] = None, max_tokens: int = 16, temperature: float = 1.0,
         seeds: Optional[list[int]] = None,
         progress: Optional[Callable[[str], ContextManager[Any]]] = None) -> list[ForkChild]:
    """Starts `n` children, restores the snapshot into each, and continues `prompt`
    (default: the snapshot's longest cached path) with a different seed per child.
    `progress(description)`, a context manager entered around each child's boot, restore and
    generation (e.g. the command line's `Steps.step`), shows them as they happen."""
    driver = driver_spec(engine)
    prompt = prompt if prompt is not None else trunk_tokens(snapshot_path)
    seeds = seeds if seeds is not None else list(range(n))
    step = progress or (lambda description: nullcontext())
    workers = [EngineWorker(driver, engine_config, start=False) for _ in range(n)]
    children = []
    try:
        for i, w in enumerate(workers):
            with step(f"child {i}: starting the {engine} engine (all {n} boot in parallel)"):
                w.wait_ready()
            with step(f"child {i}: restoring {snapshot_path}"):
                report = w.call("restore", path=str(snapshot_path), requests=False)
            with step(f"child {i}: generating ({len(prompt)} cached-prefix tokens + {max_tokens})"):
                first = w.call("generate", prompt_token_ids=prompt, max_tokens=1)
                greedy = w.call("generate", prompt_token_ids=prompt, max_tokens=max_tokens)
                out = w.call("generate", prompt_token_ids=prompt, max_tokens=max_tokens,
                             temperature=temperature, seed=seeds[i])
            children.append(ForkChild(i, seeds[i], first["cached_tokens"], first["seconds"],
                                      greedy["tokens"], out["tokens"], report["seconds"], report))
    finally:
        for w in workers:
            w.close()
    return children
