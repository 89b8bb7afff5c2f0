"""A vLLM engine behind the worker protocol (thaw.workers), for fork, demo and conformance."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from thaw.core.driver import HandleDriver
from thaw.core.ports import rendezvous_port

from .defaults import ENGINE_DEFAULTS

# What a pre-imported parent (`thaw.zygote`) imports for this driver: `import vllm` leaves
# these lazy, and a Llama engine's boot would import them; none touches a device.
PRELOAD = ["vllm.entrypoints.llm", "vllm.v1.engine.llm_engine", "vllm.v1.engine.core",
           "vllm.v1.worker.gpu_model_runner", "vllm.model_executor.models.llama", "thaw.adapters.vllm",
           "thaw.adapters.vllm.driver"]


class VLLMDriver(HandleDriver):
    """Builds `vllm.LLM(**ENGINE_DEFAULTS | config)` and attaches thaw to it. The config key
    `thaw_engine` picks how vLLM runs: "inprocess" (default; VLLM_ENABLE_V1_MULTIPROCESSING=0)
    or "multiprocess" (vLLM's default: the core and the model in their own processes).
    Without VLLM_PORT in the environment, vLLM's ports start at `rendezvous_port()`'s."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        mode = config.pop("thaw_engine", "inprocess")
        if mode not in ("inprocess", "multiprocess"):
            raise ValueError(f"thaw_engine must be 'inprocess' or 'multiprocess', not {mode!r}")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if mode == "inprocess" else "1"
        os.environ.setdefault("VLLM_PORT", str(rendezvous_port()))  # vLLM scans up from it
        t0 = time.perf_counter()
        from vllm import LLM
        self.import_seconds = time.perf_counter() - t0

        from . import attach

        # Tokens to serve before attaching (tests: blocks cached before attach are reported).
        before_attach = config.pop("thaw_prompt_before_attach", None)
        t0 = time.perf_counter()
        self.llm = LLM(**{**ENGINE_DEFAULTS, **config})
        self.boot_seconds = time.perf_counter() - t0
        if before_attach:
            self.llm.generate([{"prompt_token_ids": before_attach}], self._params(1, 0.0, None),
                              use_tqdm=False)
        self.handle = attach(self.llm)

    def _params(self, max_tokens: int, temperature: float, seed: Optional[int]):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                              ignore_eos=True)

    def info(self) -> dict[str, Any]:
        status = self.handle.status()
        return {"identity": status["identity"], "boot_seconds": self.boot_seconds,
                "import_seconds": self.import_seconds, "kv_prefault": status["kv_prefault"],
                "kv_prefault_seconds": status["kv_prefault_seconds"],
                "model_in_worker_process": status["model_in_worker_process"]}

    def generate(self, prompt_token_ids: list[int], max_tokens: int, temperature: float = 0.0,
                 seed: Optional[int] = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self.llm.generate([{"prompt_token_ids": prompt_token_ids}],
                                self._params(max_tokens, temperature, seed), use_tqdm=False)[0]
        return {"tokens": list(out.outputs[0].token_ids), "cached_tokens": out.num_cached_tokens,
                "seconds": time.perf_counter() - t0}

    def state(self) -> dict[str, Any]:
        status = self.handle.status()
        return {"free_blocks": status["free_blocks"], "cached_blocks": status["cached_blocks"]}

    def generate_many(self, prompt_token_ids: list[int], n: int, max_tokens: int,
                      temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
        """`n` branches of one prompt in one batch, each with its own seed."""
        t0 = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": prompt_token_ids}] * n,
                                 [self._params(max_tokens, temperature, seed + i) for i in range(n)],
                                 use_tqdm=False)
        return {"tokens": [list(o.outputs[0].token_ids) for o in outs],
                "cached_tokens": [o.num_cached_tokens for o in outs], "seconds": time.perf_counter() - t0}

    def generate_distinct(self, prompts: list[list[int]], max_tokens: int) -> int:
        """Serves every prompt once (greedy) in one batch; returns how many were served."""
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts],
                                 self._params(max_tokens, 0.0, None), use_tqdm=False)
        return len(outs)

    def process_stats(self) -> dict[str, Any]:
        """This engine process's resident memory and memory mappings (leak checks)."""
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        with open("/proc/self/maps") as f:
            mappings = sum(1 for _ in f)
        return {"rss_bytes": rss_pages * os.sysconf("SC_PAGE_SIZE"), "mappings": mappings}

    def recorder_stats(self) -> dict[str, Any]:
        rec = self.handle.recorder
        return {"records": len(rec.records), "bound": rec.prune_above,
                "pool_blocks": self.handle.parts.block_pool.num_gpu_blocks,
                "since_pool_start": rec.since_pool_start}

    def sleep(self, level: int) -> float:
        t0 = time.perf_counter()
        self.llm.sleep(level=level)
        return time.perf_counter() - t0

    def wake_up(self, reload_weights: bool = False) -> float:
        t0 = time.perf_counter()
        self.llm.wake_up()
        if reload_weights:
            self.llm.collective_rpc("reload_weights")
        return time.perf_counter() - t0

    def reset_prefix_cache(self) -> bool:
        return bool(self.llm.reset_prefix_cache())

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

    def add_request(self, request_id: str, prompt_token_ids: list[int], max_tokens: int,
                    temperature: float = 0.0, seed: Optional[int] = None,
                    sampling: Optional[dict[str, Any]] = None) -> None:
        """Queues a request; `sampling` sets further SamplingParams fields by name."""
        from vllm import SamplingParams

        params = self._params(max_tokens, temperature, seed)
        if sampling:
            sampling = dict(sampling)
            if "logit_bias" in sampling:  # JSON object keys are strings; vLLM wants token ids
                sampling["logit_bias"] = {int(k): v for k, v in sampling["logit_bias"].items()}
            fields = {f: getattr(params, f) for f in ("max_tokens", "temperature", "seed", "ignore_eos")}
            params = SamplingParams(**{**fields, **sampling})
        self.llm.llm_engine.add_request(request_id, {"prompt_token_ids": prompt_token_ids}, params)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.llm.llm_engine.step()

    def finish(self) -> dict[str, list[int]]:
        return self.handle.finish_requests()
