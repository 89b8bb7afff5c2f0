"""What an adapter supplies to the conformance suite, and the warm parent it builds."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from thaw.core import load
from thaw.workers import EngineWorker, RemoteError


@dataclass
class EngineUnderTest:
    """An engine as the suite sees it.

    driver: "module:Class" implementing the worker protocol (see thaw.workers): methods
        generate, state, snapshot, restore, add_request, step, finish, info.
    config: engine config of the parent and of reference engines (real weights).
    fresh_config: config of a restore target; should not read the checkpoint
        (e.g. dummy weights), so that a correct output proves the weights were restored.
    mismatches: name -> (config that the snapshot must not restore into, identity field
        the refusal must name).
    prompt: the shared prefix, long enough to fill several pages.
    page_size: tokens per KV page of the engine.
    carries_requests: whether the adapter carries in-flight requests for this way of
        running the engine (False, e.g., where the engine's core runs in another process
        than the caller's, which alone knows the caller's requests); the in-flight checks
        are then skipped with that reason.
    references_weights: whether the driver's snapshot takes `weights_from` (a snapshot file
        whose weights it references instead of copying), `direct` (written past the page
        cache) and `recycle` (written into a retired snapshot's file); the fork check then
        forks from such a session snapshot, written directly, which shares the trunk's
        weights file, and the recycling check restores one written over a retired file.
    fork_children: how many children the fork check forks (two or more: they must diverge).
    resume_oracle: what a resumed in-flight request must equal. "uninterrupted": the parent's
        own run of it to the end. "resubmitted": the parent, once that run has cached its
        tokens, given the prompt and the carried tokens as a new request; for engines whose
        resumption recomputes the KV of the last partial page with their extend kernel, not
        decode (SGLang on CUDA: bf16 greedy outputs part at the first low-margin token), so
        the engine's own way of resuming is the reference and the carried KV still has to be
        bit for bit what it computed.
    env: environment variables that `engine` and `fresh_engine` add to this one's (e.g. a
        PYTHONPATH naming where this engine's packages are, when two engines under test
        pin different releases of a dependency).
    other_weights: config overrides of an engine serving the same model with other real
        weights (e.g. another checkpoint of the same shape); the weights-swap check restores
        its snapshot into an engine whose cache holds KV of other weights. None: that check
        is skipped, saying so.
    cross_snapshot_args: what the cross-engine suite adds to this engine's `snapshot` call
        when another engine is to restore it (vLLM on CUDA: `weights_format="checkpoint"`,
        since its own format, its parameters, is vLLM's alone).
    """

    driver: str
    config: dict[str, Any]
    fresh_config: dict[str, Any]
    mismatches: dict[str, tuple[dict[str, Any], str]]
    prompt: list[int]
    page_size: int
    max_tokens: int = 8
    inflight_steps: int = 3
    inflight_max_tokens: int = 12
    fork_engine: str = "vllm"  # an engine name (thaw.core.adapter.driver_spec) or "module:Class"
    carries_requests: bool = True
    references_weights: bool = True
    fork_children: int = 4
    resume_oracle: str = "uninterrupted"
    env: dict[str, str] = field(default_factory=dict)
    cross_snapshot_args: dict[str, Any] = field(default_factory=dict)
    other_weights: Optional[dict[str, Any]] = None

    @contextmanager
    def engine(self, **overrides: Any) -> Iterator[EngineWorker]:
        with EngineWorker(self.driver, {**self.config, **overrides}, env=self.env) as w:
            yield w

    @contextmanager
    def fresh_engine(self, **overrides: Any) -> Iterator[EngineWorker]:
        with EngineWorker(self.driver, {**self.config, **self.fresh_config, **overrides}, env=self.env) as w:
            yield w

    def expected_cached(self, snapshot: Path, prompt: list[int]) -> int:
        """Full pages of `prompt` in the snapshot's tree; engines keep >= 1 token to compute."""
        matched = load(snapshot, verify=False).prefix.shared_prefix(prompt)
        limit = (len(prompt) - 1) // self.page_size * self.page_size
        return min(matched, limit)


# The parent engine's `info` (when its driver has one), for the suite's report.
ENGINE_INFO: dict[str, Any] = {}


@dataclass
class Trunk:
    """A warm parent's outputs and snapshots, made once per test class."""

    trunk_path: Path
    inflight_path: Path
    session_path: Path  # the trunk's KV, its weights referenced from trunk_path (or trunk_path)
    cold: dict[str, Any]
    cached: dict[str, Any]
    inflight_prompt: list[int]
    uninterrupted: list[int]
    extra: dict[str, Any] = field(default_factory=dict)
    # The session snapshot again, written into a retired snapshot's file (a copy of the
    # trunk's, larger than it) with `recycle`; None where the driver does not take it.
    recycled_path: Optional[Path] = None
    # The parent's in-memory capture at the trunk's snapshot, and its restore from memory;
    # None where the driver has no `capture` (`thaw.core.driver.CapturingDriver`).
    captured: Optional[dict[str, Any]] = None


def build_trunk(eut: EngineUnderTest, workdir: Path) -> Trunk:
    trunk_path, inflight_path = workdir / "trunk.thaw", workdir / "inflight.thaw"
    inflight_prompt = eut.prompt[: len(eut.prompt) * 3 // 4]
    with eut.engine() as parent:
        try:
            ENGINE_INFO.update(parent.call("info"))
        except RemoteError as exc:  # `info` is optional in the protocol; say so in the report
            ENGINE_INFO["identity"] = {"engine": f"(driver has no info: {exc.type})"}
        cold = parent.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
        cached = parent.call("generate", prompt_token_ids=eut.prompt, max_tokens=eut.max_tokens)
        parent.call("snapshot", path=str(trunk_path))
        captured = _captured_in_memory(parent)
        session_path, recycled_path = trunk_path, None
        if eut.references_weights:
            session_path = workdir / "session.thaw"
            parent.call("snapshot", path=str(session_path), weights_from=str(trunk_path), direct=True)
            retired, recycled_path = workdir / "retired.thaw", workdir / "recycled.thaw"
            shutil.copyfile(trunk_path, retired)
            parent.call("snapshot", path=str(recycled_path), weights_from=str(trunk_path), recycle=str(retired))
        if not eut.carries_requests:
            return Trunk(trunk_path, inflight_path, session_path, cold, cached, inflight_prompt, [],
                         recycled_path=recycled_path, captured=captured)
        parent.call("add_request", request_id="inflight-0", prompt_token_ids=inflight_prompt,
                    max_tokens=eut.inflight_max_tokens)
        parent.call("step", n=eut.inflight_steps)
        parent.call("snapshot", path=str(inflight_path))
        uninterrupted = parent.call("finish")["inflight-0"]
        # The other reference (see resume_oracle): the carried tokens resubmitted to the parent.
        req = next(r for r in load(inflight_path, verify=False).requests if r.request_id == "inflight-0")
        carried, rest = list(req.output_token_ids), []
        if len(carried) < eut.inflight_max_tokens:  # else the in-flight check fails on its own
            rest = parent.call("generate", prompt_token_ids=inflight_prompt + carried,
                               max_tokens=eut.inflight_max_tokens - len(carried))["tokens"]
    return Trunk(trunk_path, inflight_path, session_path, cold, cached, inflight_prompt, uninterrupted,
                 extra={"resubmitted": carried + rest}, recycled_path=recycled_path, captured=captured)


def _captured_in_memory(parent: EngineWorker) -> Optional[dict[str, Any]]:
    """The parent's in-memory capture (`thaw.core.driver.CapturingDriver`) and its restore into
    the parent itself (every page already cached), where the driver has them; else None."""
    try:
        summary = parent.call("capture", weights=False)
    except RemoteError as exc:
        if exc.type != "AttributeError":
            raise
        return None
    return {**summary, "restored": parent.call("restore_captured", weights=False)}
