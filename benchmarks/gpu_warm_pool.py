"""A warm pool of started vLLM engines on a GPU: request -> first token on a 4k-token trunk.

One run, one card, the 8B-shaped bf16 Llama of `gpu_e2e_vllm.py` (random weights). A parent
engine prefills the trunk and snapshots it (weights as vLLM parameters + KV); then an
`EnginePool` of two engines with dummy weights, each in its own process, serves requests
(`pool.request`, one first token each). Measured from the caller, every IPC hop included:
  unprepared   the first request to a started engine: weights + KV restore + first token
               (the file opened and registered on first use)
  held         after `pool.prepare(snapshot)`: the trunk's pages still held, a cache hit
  evicted      prepared, each engine's prefix cache emptied before the request: the trunk's
               KV restored from the registered file, then the first token
  kv_on_device prepared with `kv_on_device=True`, prefix cache emptied: KV scattered from
               pages kept on the device
  concurrent   four requests at once on the two engines, prefix caches emptied
  prefill      the baseline, same engines: prefix cache emptied, the trunk prefilled, first
               token; no thaw involved
Then brand-new workers, one at a time, process start -> first token on the trunk:
  cold         `python -m thaw.workers` on the real checkpoint: import, boot, prefill
  fresh        the same new process with dummy weights: import, boot, restore, first token
  forked       forked from a `thaw.zygote` parent that imported vLLM before (its import
               time shown apart): boot, restore, first token
Usage: python benchmarks/gpu_warm_pool.py [--trunk 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from thaw.adapters.vllm.driver import PRELOAD
from thaw.fleet import EnginePool, LocalPlacement
from thaw.core.registry import driver_spec
from thaw.workers import EngineWorker
from thaw.zygote import Zygote

from gpu_e2e_vllm import ENGINE, build_model, cold_start, phase
from receipt import write_receipt


def _empty_caches(pool: EnginePool) -> None:
    for engine in pool.engines:
        engine.call("reset_prefix_cache")


def _rounds(pool: EnginePool, snap: str, trunk: list[int], n: int, evict: bool) -> dict:
    served = []
    for _ in range(n):
        if evict:
            _empty_caches(pool)
        served.append(pool.request(snap, trunk, max_tokens=1).to_json())
    return {"requests": served, "median_seconds": statistics.median(s["seconds"] for s in served),
            "median_restore_seconds": statistics.median(s["restore_seconds"] for s in served),
            "median_generate_seconds": statistics.median(s["generate_seconds"] for s in served),
            "cached_tokens": sorted({s["cached_tokens"] for s in served})}


def new_worker(cfg: dict, snap: str, trunk: list[int], zygote=None) -> dict:
    """Process start (or fork) -> ready -> restore (weights + KV) -> first token."""
    t0 = time.perf_counter()
    with EngineWorker(driver_spec("vllm"), {**cfg, "load_format": "dummy"}, zygote=zygote) as w:
        ready = time.perf_counter() - t0
        rep = w.call("restore", path=snap, requests=False)
        first = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
        info = w.call("info")
    return {"start_to_ready_s": ready, "vllm_import_s": info["import_seconds"], "engine_boot_s": info["boot_seconds"],
            "restore_s": rep["seconds"], "ttft_s": first["seconds"], "cached_tokens": first["cached_tokens"],
            "total_s": ready + rep["seconds"] + first["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    snap = "/tmp/trunk8b-pool.thaw"
    r: dict = {"model": "8B-shaped Llama, bf16, random weights", "trunk_tokens": args.trunk,
               "target_request_to_first_token_s": 0.3}
    r["build_model_s"] = build_model(args.model)
    cfg = {**ENGINE, "model": args.model}
    r["engine"] = cfg

    def parent():
        with EngineWorker(driver_spec("vllm"), cfg) as w:
            cold = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            cached = w.call("generate", prompt_token_ids=trunk, max_tokens=16)
            snapshot = w.call("snapshot", path=snap)
        return {"prefill_ttft_s": cold["seconds"], "cached_tokens_out": cached["tokens"],
                "cached_cached_tokens": cached["cached_tokens"], "snapshot_s": snapshot["seconds"]}

    phase(r, "parent", parent)
    t0 = time.perf_counter()
    pool = EnginePool("vllm", {**cfg, "load_format": "dummy"}, 2, placement=LocalPlacement())
    r["pool_start_s"] = time.perf_counter() - t0
    try:
        phase(r, "unprepared", lambda: pool.request(snap, trunk, max_tokens=1).to_json())
        phase(r, "prepare", lambda: pool.prepare(snap))
        phase(r, "held", lambda: _rounds(pool, snap, trunk, args.rounds, evict=False))
        phase(r, "evicted", lambda: _rounds(pool, snap, trunk, args.rounds, evict=True))

        def output():
            _empty_caches(pool)
            s = pool.request(snap, trunk, max_tokens=16)
            return {"tokens": s.tokens, "cached_tokens": s.cached_tokens,
                    "equals_parent_cached": s.tokens == r["parent"].get("cached_tokens_out")}

        phase(r, "output", output)

        def concurrent():
            _empty_caches(pool)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=4) as threads:
                served = list(threads.map(lambda _: pool.request(snap, trunk, max_tokens=1).to_json(), range(4)))
            return {"wall_s": time.perf_counter() - t0, "requests": served}

        phase(r, "concurrent", concurrent)

        def prefill():
            out = []
            for _ in range(3):
                _empty_caches(pool)
                out.append(pool.engines[0].call("generate", prompt_token_ids=trunk, max_tokens=1))
            return {"ttft_s": [o["seconds"] for o in out], "median_ttft_s": statistics.median(o["seconds"] for o in out),
                    "cached_tokens": [o["cached_tokens"] for o in out]}

        phase(r, "prefill", prefill)
        phase(r, "prepare_kv_on_device", lambda: pool.prepare(snap, kv_on_device=True))
        phase(r, "kv_on_device", lambda: _rounds(pool, snap, trunk, args.rounds, evict=True))
    finally:
        pool.close()
    phase(r, "cold", lambda: cold_start("vllm", cfg, trunk)[0])
    phase(r, "fresh", lambda: new_worker(cfg, snap, trunk))

    def forked():
        t0 = time.perf_counter()
        with Zygote(PRELOAD) as zygote:
            started = time.perf_counter() - t0
            return {"zygote_start_s": started, "zygote_import_s": zygote.import_seconds,
                    **new_worker(cfg, snap, trunk, zygote)}

    phase(r, "forked", forked)
    try:
        r["ratio_cold_over_forked_total"] = r["cold"]["total_s"] / r["forked"]["total_s"]
        r["ratio_fresh_over_forked_total"] = r["fresh"]["total_s"] / r["forked"]["total_s"]
    except (KeyError, TypeError) as exc:
        r["new_worker_ratios_error"] = f"a phase failed: {exc!r}"
    try:
        base = r["prefill"]["median_ttft_s"]
        for name in ("held", "evicted", "kv_on_device"):
            r[f"ratio_prefill_over_{name}_request"] = base / r[name]["median_seconds"]
        r["ratio_prefill_over_unprepared_request"] = base / r["unprepared"]["seconds"]
        r["evicted_meets_target"] = r["evicted"]["median_seconds"] <= r["target_request_to_first_token_s"]
    except (KeyError, TypeError) as exc:
        r["ratios_error"] = f"a phase failed: {exc!r}"
    print(f"receipt: {write_receipt('gpu_warm_pool', r)}")


if __name__ == "__main__":
    main()
