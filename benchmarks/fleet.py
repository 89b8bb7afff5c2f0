"""Branches per second of a fork fleet on a local Ray cluster against the same engines
prefilling the trunk cold, in one run.

A parent engine prefills one --context token trunk (default 2,048) on the 6-layer demo
model and snapshots it. A pool of --engines vLLM engines (Ray actors, one CPU each, dummy
weights) is started once; their boot is reported apart and counted on neither side. Then:
  - fleet: `EnginePool.fork(snapshot, --branches)`: each engine restores the trunk (KV
    and, on its first restore, weights) and generates its block of branches in one batch;
    restore counted;
  - fleet again: the pool's next fork of the same trunk after its prefix caches are reset
    (KV restored, weights already loaded): a warm pool's steady state;
  - cold: the same engines, prefix cache reset, each prefills the trunk once and then
    generates the same block from the trunk's tokens with the same seeds (a cache hit).
Both sides produce --branches x --max-tokens tokens; reported: seconds, branches/s and
the ratio. With --gpu each engine is an actor holding one GPU (bf16, block size 16), the
same code on a GPU machine.
Usage: python benchmarks/fleet.py [--engines 2] [--branches 64] [--context 2048] [--gpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from thaw.demo_fork import DEMO_MODEL
from thaw.fleet import EnginePool, RayPlacement
from thaw.testing.tiny_model import build_tiny_llama
from thaw.workers import EngineWorker

from receipt import write_receipt

DRIVER = "thaw.adapters.vllm.driver:VLLMDriver"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--branches", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--gpu", action="store_true", help="one GPU per engine actor (bf16, block size 16)")
    args = ap.parse_args()
    import ray

    work = tempfile.mkdtemp(prefix="thaw-fleet-bench-")
    model = str(build_tiny_llama(os.path.join(work, "model"), DEMO_MODEL))
    trunk = [4 + (i * 7919) % 500 for i in range(args.context)]
    config = {"model": model, "max_model_len": args.context + 64, "kv_cache_memory_bytes": 1 << 30}
    if args.gpu:  # FlashAttention: bf16, block sizes divisible by 16
        config.update(dtype="bfloat16", block_size=16)
    resources = {"num_cpus": 1, "num_gpus": 1} if args.gpu else {"num_cpus": 1}
    path = os.path.join(work, "trunk.thaw")
    with EngineWorker(DRIVER, config) as parent:
        parent.call("generate", prompt_token_ids=trunk, max_tokens=1)
        parent.call("snapshot", path=path)
    ray.init(num_cpus=args.engines, num_gpus=args.engines if args.gpu else 0, include_dashboard=False,
             log_to_driver=False)
    try:
        t0 = time.perf_counter()
        pool = EnginePool("vllm", {**config, "load_format": "dummy"}, args.engines,
                          placement=RayPlacement(resources))
        boot = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            branches = pool.fork(path, args.branches, prompt=trunk, max_tokens=args.max_tokens, seed=0)
            fleet = time.perf_counter() - t0
            for engine in pool.engines:  # a warm pool's next fork: weights already there, cache empty
                engine.call("reset_prefix_cache")
            t0 = time.perf_counter()
            again = pool.fork(path, args.branches, prompt=trunk, max_tokens=args.max_tokens, seed=0)
            fleet_again = time.perf_counter() - t0
            n = len(pool.engines)
            blocks = [(k * args.branches // n, (k + 1) * args.branches // n) for k in range(n)]

            def cold_block(k: int) -> dict:
                engine, (a, b) = pool.engines[k], blocks[k]
                engine.call("reset_prefix_cache")
                engine.call("generate", prompt_token_ids=trunk, max_tokens=1)  # the trunk's prefill, once
                return engine.call("generate_many", prompt_token_ids=trunk, n=b - a, max_tokens=args.max_tokens,
                                   temperature=1.0, seed=a)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=n) as ex:
                cold_out = list(ex.map(cold_block, range(n)))
            cold = time.perf_counter() - t0
        finally:
            pool.close()
    finally:
        ray.shutdown()
    cold_tokens = [t for out in cold_out for t in out["tokens"]]
    results = {
        "engines": args.engines, "branches": args.branches, "context_tokens": args.context,
        "max_tokens": args.max_tokens,
        "placement": f"Ray actors, local cluster, each {resources}",
        "model": {"layers": 6, "hidden": 512, "kv_heads": 8, "head_dim": 64,
                  "dtype": config.get("dtype", "float32"), "block_size": config.get("block_size", 32)},
        "pool_boot_seconds": boot,
        "fleet_seconds": fleet, "fleet_again_seconds": fleet_again, "cold_seconds": cold,
        "fleet_again_branches_per_second": args.branches / fleet_again, "speedup_again": cold / fleet_again,
        "fleet_again_restore_seconds": sorted({round(b.restore_seconds, 4) for b in again}),
        "fleet_branches_per_second": args.branches / fleet, "cold_branches_per_second": args.branches / cold,
        "speedup": cold / fleet,
        "fleet_cached_tokens": sorted({b.cached_tokens for b in branches}),
        "cold_cached_tokens_max": max(c for out in cold_out for c in out["cached_tokens"]),
        "same_tokens_as_cold": [b.tokens for b in branches] == cold_tokens,
        "fleet_restore_seconds": sorted({round(b.restore_seconds, 4) for b in branches}),
        "includes": "fleet: restore (KV + weights on first restore) and batched generation per engine; "
                    "cold: prefix-cache reset, one prefill of the trunk per engine, then the same batched generation; "
                    "pool boot on neither",
    }
    print(results)
    print("receipt:", write_receipt("fleet", results))


if __name__ == "__main__":
    main()
