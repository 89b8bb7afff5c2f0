"""A vLLM `AsyncLLM` behind the worker protocol (thaw.workers): what `vllm serve` and RL
frameworks run, driven from one event loop that this driver owns and runs per call."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any, Optional

from thaw.core.driver import HandleDriver
from thaw.core.ports import rendezvous_port

from .driver import ENGINE_DEFAULTS


class AsyncVLLMDriver(HandleDriver):
    """Builds `AsyncLLM.from_engine_args(AsyncEngineArgs(**ENGINE_DEFAULTS | config))` and
    attaches thaw to it (an `AsyncVLLMHandle`: its calls are awaited here)."""

    def __init__(self, config: dict[str, Any]) -> None:
        os.environ.setdefault("VLLM_PORT", str(rendezvous_port()))  # as VLLMDriver
        self.loop = asyncio.new_event_loop()
        t0 = time.perf_counter()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        self.import_seconds = time.perf_counter() - t0

        from . import attach

        async def start() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**{**ENGINE_DEFAULTS, **config}))

        t0 = time.perf_counter()
        self.llm = self.loop.run_until_complete(start())
        self.boot_seconds = time.perf_counter() - t0
        self.handle = attach(self.llm)
        self.bound = self.run(self.handle.bind())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def info(self) -> dict[str, Any]:
        status = self.run(self.handle.status())
        return {"identity": status["identity"], "boot_seconds": self.boot_seconds,
                "import_seconds": self.import_seconds, "kv_prefault": status["kv_prefault"],
                "model_in_worker_process": status["model_in_worker_process"]}

    def generate(self, prompt_token_ids: list[int], max_tokens: int, temperature: float = 0.0,
                 seed: Optional[int] = None) -> dict[str, Any]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, ignore_eos=True)

        async def one() -> Any:
            final = None
            async for out in self.llm.generate({"prompt_token_ids": prompt_token_ids}, params,
                                               request_id=uuid.uuid4().hex):
                final = out
            return final

        t0 = time.perf_counter()
        out = self.run(one())
        return {"tokens": list(out.outputs[0].token_ids), "cached_tokens": out.num_cached_tokens,
                "seconds": time.perf_counter() - t0}

    def state(self) -> dict[str, Any]:
        status = self.run(self.handle.status())
        return {"free_blocks": status["free_blocks"], "cached_blocks": status["cached_blocks"]}

    def snapshot(self, path: str, weights: bool = True, weights_format: Optional[str] = None,
                 strict: bool = False, requests: bool = True, weights_from: Optional[str] = None,
                 direct: bool = False, recycle: Optional[str] = None) -> dict[str, Any]:
        return self.timed(lambda: self.handle.snapshot(
            path, weights=weights, weights_format=weights_format, strict=strict, requests=requests,
            weights_from=weights_from, direct=direct, recycle=recycle))

    def restore(self, path: str, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> dict[str, Any]:
        return self.timed(lambda: self.handle.restore(path, weights=weights, requests=requests,
                                                      trust_unknown_weights=trust_unknown_weights))

    def close(self) -> None:
        self.llm.shutdown()
        self.loop.close()
