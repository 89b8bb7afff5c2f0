"""The handle `attach` returns, in the process that owns the `sglang.Engine`.

The engine's scheduler runs in another process; every snapshot and restore runs there,
through `Engine.collective_rpc("thaw_call", ...)` (see `plugin` and `rpc`), and comes back
through a reply file, so errors keep their type (ChecksumError, IdentityMismatch, ...).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional, Union

from thaw.core import EngineUnsupported, Identity, StateSnapshot, ThawError
from thaw.core.across_processes import capture_through_file, restore_through_file
from thaw.core.adapter import EngineAdapter
from thaw.core.errors import reply_result
from thaw.core.object_store import absolute

from .namespaces import decode_namespace
from .rpc import PLUGIN_HINT, RPCFailed, call_thaw


PathLike = Union[str, "os.PathLike[str]"]


class SGLangHandle(EngineAdapter):
    """Bound to one `sglang.Engine` in this process (`thaw.core.adapter.EngineAdapter`). Use
    from the thread that drives the engine, while no `generate` call is running."""

    def __init__(self, engine: Any) -> None:
        if not hasattr(engine, "collective_rpc") or not hasattr(engine, "tokenizer_manager"):
            raise EngineUnsupported(f"attach() needs an sglang.Engine, got {type(engine).__name__}")
        self.engine = engine
        self.resumed: dict[str, asyncio.Task] = {}
        self.resumed_prior: dict[str, list[int]] = {}
        self.hello = self.call("hello")

    # -- the scheduler side ------------------------------------------------------------
    def call(self, op: str, **args: Any) -> Any:
        """Runs `scheduler_ops.<op>` in the scheduler process and returns its result."""
        try:
            reply = call_thaw(self._send, op, args)
        except RPCFailed as exc:
            if exc.plugin_missing:
                raise EngineUnsupported(f"{PLUGIN_HINT} ({exc})") from None
            raise ThawError(f"SGLang RPC thaw_call({op}) failed: {exc}") from None
        return reply_result(reply, "in SGLang's scheduler")

    def _send(self, params: dict[str, Any]) -> None:
        try:
            self.engine.collective_rpc("thaw_call", **params)
        except AssertionError as exc:  # SGLang reports a failed RPC this way
            raise RPCFailed(str(exc)) from None

    def identity(self) -> Identity:
        return Identity.from_json(self.call("hello")["identity"])

    def state(self) -> dict[str, Any]:
        return self.call("state")

    # -- generation control (tokenizer manager, on the engine's event loop) ----------------
    def _run(self, coro: Any) -> Any:
        return self.engine.loop.run_until_complete(coro)

    def pause(self) -> None:
        """Stops the scheduler from running batches; live requests keep their KV in place."""
        from sglang.srt.managers.io_struct import PauseGenerationReqInput

        self._run(self.engine.tokenizer_manager.pause_generation(PauseGenerationReqInput(mode="in_place")))

    def resume(self) -> None:
        from sglang.srt.managers.io_struct import ContinueGenerationReqInput

        self._run(self.engine.tokenizer_manager.continue_generation(ContinueGenerationReqInput()))

    # -- snapshot / restore ------------------------------------------------------------
    def snapshot(self, path: PathLike, *, weights: bool = True, requests: bool = True,
                 weights_from: Optional[PathLike] = None, direct: bool = False,
                 recycle: Optional[PathLike] = None) -> dict[str, Any]:
        """Writes the engine's state (tree, KV, live requests unless `requests=False`,
        weights) to `path` atomically; the scheduler writes it between two batches.
        `weights_from`: a snapshot file holding the engine's weights (same digest, checked
        first), which the new snapshot references instead of copying them; `direct`:
        written past the page cache; `recycle`: a retired snapshot file in the same directory
        whose page-cache pages the new file overwrites (`write_container`)."""
        return self.call("snapshot", path=absolute(path), weights=weights, requests=requests,
                         weights_from=None if weights_from is None else absolute(weights_from), direct=direct,
                         recycle=None if recycle is None else absolute(recycle))

    def capture(self, *, weights: bool = True, requests: bool = True) -> StateSnapshot:
        """The engine's state as an in-memory `StateSnapshot` (the `EngineAdapter` contract),
        crossing from the scheduler's process as a private file (`across_processes`)."""
        return capture_through_file(lambda path: self.snapshot(path, weights=weights, requests=requests))

    def restore(self, snapshot: Union[PathLike, StateSnapshot], *, weights: bool = True,
                requests: bool = True, trust_unknown_weights: bool = False) -> dict[str, Any]:
        """Hydrates the engine from a snapshot file (or an in-memory `StateSnapshot`, which
        crosses to the scheduler as a private file). Raises a ThawError subclass before
        anything changes when the snapshot does not fit or is corrupted. `weights=False`
        keeps the engine's weights: their digest must be known and equal the snapshot's,
        unless `trust_unknown_weights`. Restored requests are resubmitted and run whenever
        the engine's event loop runs (`finish_requests`, or the next `generate`)."""
        if isinstance(snapshot, StateSnapshot):
            return restore_through_file(snapshot, lambda path: self.restore(
                path, weights=weights, requests=requests, trust_unknown_weights=trust_unknown_weights))
        report = self.call("restore", path=absolute(snapshot), weights=weights, requests=requests,
                           trust_unknown_weights=trust_unknown_weights)
        for req in report["requests"]:
            self._resubmit(req)
        return report

    def prepare(self, path: PathLike, *, kv_on_device: bool = False) -> float:
        """Readies restores from `path` ahead of them and returns the seconds it took: the
        file opened and, on CUDA, registered (with the file its weights are referenced
        from). `kv_on_device` (CUDA only) also keeps its KV pages, checked as they land, in
        GPU memory beside the pool (their size, `kv_bytes` of a restore) until another file
        is prepared so or `release_prepared`: restores of this file then write them from
        there, not over the link. Raises EngineUnsupported where they cannot be kept."""
        return self.call("prepare", path=absolute(path), kv_on_device=kv_on_device)["seconds"]

    def release_prepared(self) -> None:
        """Frees what `prepare` and restores hold: CUDA registrations, KV pages on the GPU."""
        self.call("release_prepared")

    def _resubmit(self, req: dict[str, Any]) -> None:
        extra, salt = decode_namespace(req["extra"].get("namespace"))
        if extra is not None:
            raise EngineUnsupported(f"request {req['request_id']!r} carries SGLang extra key "
                                    f"{extra!r}, which Engine.generate cannot resubmit")
        sampling = dict(req["sampling"])
        produced = len(req["output_token_ids"])
        sampling["max_new_tokens"] = max(1, sampling["max_new_tokens"] - produced)
        sampling["min_new_tokens"] = max(0, (sampling.get("min_new_tokens") or 0) - produced)
        salted = {"cache_salt": salt} if salt else {}  # releases without salts have no such argument
        coro = self.engine.async_generate(
            input_ids=list(req["prompt_token_ids"]) + list(req["output_token_ids"]),
            sampling_params=sampling, rid=req["request_id"], **salted)
        self.resumed[req["request_id"]] = self.engine.loop.create_task(coro)
        self.resumed_prior[req["request_id"]] = list(req["output_token_ids"])

    def finish_requests(self, extra: Optional[dict[str, asyncio.Task]] = None) -> dict[str, list[int]]:
        """Runs the engine until every resumed request (and the `extra` tasks) finish; returns
        each one's full output, including tokens generated before the snapshot."""
        tasks = {**self.resumed, **(extra or {})}
        self.resumed = {}
        results = self._run(asyncio.gather(*tasks.values())) if tasks else []
        return {rid: self.resumed_prior.pop(rid, []) + list(out["output_ids"])
                for rid, out in zip(tasks, results)}


def attach(engine: Any) -> SGLangHandle:
    """Binds thaw to an `sglang.Engine`. The engine must have been started with thaw
    installed: its plugin adds the scheduler-side operations and records the token ids of
    SGLang's default (Rust) tree core as they are inserted."""
    return SGLangHandle(engine)
