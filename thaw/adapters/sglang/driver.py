"""An SGLang engine behind the worker protocol (thaw.workers), for fork, demo and conformance."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional

from thaw.core.driver import HandleDriver
from thaw.core.ports import rendezvous_port

from .defaults import CPU_ENV, ENGINE_DEFAULTS
from .rpc import BUSY_WAIT, SchedulerBusy


class SGLangDriver(HandleDriver):
    """Builds `sglang.Engine(model_path=config["model"], **ENGINE_DEFAULTS | config)` and
    attaches thaw to it. Config key `model` is the model directory (as for vLLM); key
    `env` sets environment variables for the engine (e.g. its radix tree core). Without a
    `nccl_port` in the config, the engine's rendezvous port is `rendezvous_port()`'s."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = {**ENGINE_DEFAULTS, **config}
        if config.get("nccl_port") is None:
            config["nccl_port"] = rendezvous_port()
        model = config.pop("model")
        os.environ.update(config.pop("env", {}))
        for key, value in (CPU_ENV if config["device"] == "cpu" else {}).items():
            os.environ.setdefault(key, value)
        import sglang

        from . import attach

        t0 = time.perf_counter()
        self.engine = sglang.Engine(model_path=model, **config)
        self.boot_seconds = time.perf_counter() - t0
        try:
            self.handle = attach(self.engine)
        except BaseException:
            self.engine.shutdown()  # its scheduler processes must not outlive a failed attach
            raise
        self.pending: dict[str, asyncio.Task] = {}
        self.paused = False

    def _sampling(self, max_tokens: int, temperature: float, seed: Optional[int]) -> dict[str, Any]:
        return {"max_new_tokens": max_tokens, "temperature": temperature, "ignore_eos": True,
                **({"sampling_seed": seed} if seed is not None else {})}

    def _run(self, coro: Any) -> Any:
        return self.engine.loop.run_until_complete(coro)

    def info(self) -> dict[str, Any]:
        return {"identity": self.handle.identity().to_json(), "boot_seconds": self.boot_seconds}

    def generate(self, prompt_token_ids: list[int], max_tokens: int, temperature: float = 0.0,
                 seed: Optional[int] = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        if seed is not None:  # a request run alone samples reproducibly from the seeded RNG
            self.handle.call("seed_rng", seed=seed)
        out = self._run(self.engine.async_generate(
            input_ids=prompt_token_ids, sampling_params=self._sampling(max_tokens, temperature, seed)))
        return {"tokens": list(out["output_ids"]), "cached_tokens": out["meta_info"]["cached_tokens"],
                "seconds": time.perf_counter() - t0}

    def generate_many(self, prompt_token_ids: list[int], n: int, max_tokens: int,
                      temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
        """`n` branches of one prompt sent as one batched request (so the scheduler takes
        them in one step, as vLLM's one `generate` call), each with its own seed."""
        t0 = time.perf_counter()
        outs = self._run(self.engine.async_generate(
            input_ids=[prompt_token_ids] * n,
            sampling_params=[self._sampling(max_tokens, temperature, seed + i) for i in range(n)]))
        return {"tokens": [list(o["output_ids"]) for o in outs],
                "cached_tokens": [o["meta_info"]["cached_tokens"] for o in outs],
                "seconds": time.perf_counter() - t0}

    def reset_prefix_cache(self) -> bool:
        """Flushes SGLang's radix cache, waiting (at most `BUSY_WAIT` seconds) for the scheduler
        to retire requests that have already answered: SGLang refuses a flush until then."""
        deadline = time.monotonic() + BUSY_WAIT
        while True:
            result = self.engine.flush_cache()
            if result.success:
                return True
            if time.monotonic() > deadline:
                raise SchedulerBusy(f"SGLang's scheduler did not go idle within {BUSY_WAIT:.0f} s to flush its "
                                    f"cache: {getattr(result, 'message', '') or 'requests still running'}")
            time.sleep(0.02)

    def state(self) -> dict[str, Any]:
        return self.handle.state()

    def snapshot(self, path: str, weights: bool = True, weights_from: Optional[str] = None,
                 direct: bool = False, recycle: Optional[str] = None) -> dict[str, Any]:
        return self.timed(lambda: self.handle.snapshot(path, weights=weights, weights_from=weights_from,
                                                       direct=direct, recycle=recycle))

    def restore(self, path: str, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> dict[str, Any]:
        report = self.timed(lambda: self.handle.restore(path, weights=weights, requests=requests,
                                                        trust_unknown_weights=trust_unknown_weights))
        report["requests"] = [r["request_id"] for r in report["requests"]]
        return report

    def add_request(self, request_id: str, prompt_token_ids: list[int], max_tokens: int,
                    temperature: float = 0.0, seed: Optional[int] = None,
                    sampling: Optional[dict[str, Any]] = None) -> None:
        """Queues a request; `sampling` sets further SGLang sampling parameters by name."""
        params = {**self._sampling(max_tokens, temperature, seed), **(sampling or {})}
        self.pending[request_id] = self.engine.loop.create_task(self.engine.async_generate(
            input_ids=prompt_token_ids, sampling_params=params, rid=request_id))

    def step(self, n: int = 1) -> None:
        """Lets the added requests produce at least `n` tokens each, then pauses the engine
        in place (requests keep their KV) so that a snapshot sees them in flight. SGLang
        runs batches on its own; the count may overshoot `n`, never undershoot it."""
        while True:
            self._run(asyncio.sleep(0.01))
            live = self.handle.call("progress")
            if all(t.done() or live.get(rid, 0) >= n for rid, t in self.pending.items()):
                break
        self.handle.pause()
        self.paused = True

    def finish(self) -> dict[str, list[int]]:
        if self.paused:
            self.handle.resume()
            self.paused = False
        pending, self.pending = self.pending, {}
        return self.handle.finish_requests(extra=pending)

    def close(self) -> None:
        self.engine.shutdown()
