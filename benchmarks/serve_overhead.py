"""What running vLLM as people deploy it costs thaw: the same snapshot and restore through
the in-process engine, vLLM's default multiprocess `LLM` (thaw in the engine core and the
worker), and a running server (`vllm serve` with thaw's middleware, over HTTP), in one run.

For one shared prefix (default 8,192 tokens) on an 8-layer GQA model (hidden 1024, 2 KV
heads of 64), each path:
  - snapshot: the parent's snapshot of that prefix (KV and weights), timed by the caller
    (driver call, or the HTTP client for the server), with the time the engine core
    reported for the same call (`core_s`: the rest is the path's transport);
  - restore, two kinds, each into an empty prefix cache (reset before every repetition):
    `restore_s` KV and weights into a booted engine with dummy weights (a fresh worker);
    `restore_kv_s` KV only into the parent itself (a warm engine with those weights);
  - for the server also the first token on the prefix: cold prefill (cache reset) against
    a restore followed by the first token, restore counted, for both restore kinds.
Reported: medians, and the multiprocess and server paths as ratios to the in-process one,
twice: against the in-process engine on the same single core that vLLM's CPU backend binds
a worker process to (`VLLM_CPU_OMP_THREADS_BIND=auto` keeps the other cores for the engine
core and the server; like for like: thaw's worker-side work gets one core in every path),
and against the unpinned in-process engine (all cores), shown apart.
Usage: python benchmarks/serve_overhead.py [--context 8192] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Optional

from thaw.http_client import call
from thaw.testing.tiny_model import TinyLlama, build_tiny_llama
from thaw.testing.vllm_server import VLLMServer
from thaw.workers import EngineWorker

from receipt import write_receipt

DRIVER = "thaw.adapters.vllm.driver:VLLMDriver"
KEY = "bench"
MODEL = TinyLlama(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=2, head_dim=64, max_position_embeddings=16384)
KV_CACHE_BYTES = 512 * 2**20


def engine_paths(model: str, context: list[int], snaps: str, reps: int, mode: str,
                 cores: Optional[set[int]] = None) -> dict:
    """The driver paths; with `cores`, the engine's processes run on those cores only."""
    config = {"model": model, "max_model_len": len(context) + 64, "kv_cache_memory_bytes": KV_CACHE_BYTES,
              "thaw_engine": mode}
    path = os.path.join(snaps, f"{mode}.thaw")
    everywhere = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)  # inherited by the engine's process, started next
    try:
        return _engine_paths(config, context, path, reps)
    finally:
        os.sched_setaffinity(0, everywhere)


def _engine_paths(config: dict, context: list[int], path: str, reps: int) -> dict:
    with EngineWorker(DRIVER, config) as parent:
        parent.call("generate", prompt_token_ids=context, max_tokens=1)
        snapshot = [_reported(lambda: parent.call("snapshot", path=path)) for _ in range(reps)]
        restore_kv = []
        for _ in range(reps):
            parent.call("reset_prefix_cache")
            restore_kv.append(_reported(lambda: parent.call("restore", path=path, weights=False)))
    with EngineWorker(DRIVER, {**config, "load_format": "dummy"}) as child:
        restore = []
        for _ in range(reps):
            child.call("reset_prefix_cache")
            restore.append(_reported(lambda: child.call("restore", path=path)))
        first = child.call("generate", prompt_token_ids=context, max_tokens=1)
    return {**_medians(snapshot=snapshot, restore=restore, restore_kv=restore_kv),
            "cached_tokens_after_restore": first["cached_tokens"]}


def server_path(model: str, context: list[int], snaps: str, reps: int, logs: str) -> dict:
    args = ("--dtype", "float32", "--max-model-len", str(len(context) + 64), "--block-size", "32",
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--enforce-eager")
    dev = {"VLLM_SERVER_DEV_MODE": "1"}  # /reset_prefix_cache
    parent = VLLMServer(model, snaps, os.path.join(logs, "parent.log"), *args, api_key=KEY, env=dev)
    child = VLLMServer(model, snaps, os.path.join(logs, "child.log"), *args, "--load-format", "dummy",
                       api_key=KEY, env=dev)
    thaw_call = lambda server, op, **body: call(server.url, op, {"path": "server.thaw", **body}, api_key=KEY)
    try:
        parent.wait(), child.wait()
        parent.complete(context, max_tokens=1)
        snapshot = [_reported(lambda: thaw_call(parent, "snapshot")) for _ in range(reps)]
        restore, restore_kv, cold, warm, warm_kv = [], [], [], [], []
        for _ in range(reps):
            child.post("/reset_prefix_cache")
            cold.append(_timed(lambda: child.complete(context, max_tokens=1)))
            child.post("/reset_prefix_cache")
            restore.append(_reported(lambda: thaw_call(child, "restore")))
            t0 = time.perf_counter()
            _, cached = child.complete(context, max_tokens=1)
            warm.append(time.perf_counter() - t0)
            parent.post("/reset_prefix_cache")
            restore_kv.append(_reported(lambda: thaw_call(parent, "restore", weights=False)))
            t0 = time.perf_counter()
            _, cached_kv = parent.complete(context, max_tokens=1)
            warm_kv.append(time.perf_counter() - t0)
    finally:
        parent.stop()
        child.stop()
    out = {**_medians(snapshot=snapshot, restore=restore, restore_kv=restore_kv),
           "cached_tokens_after_restore": cached, "cached_tokens_after_kv_restore": cached_kv,
           "cold_ttft_s": statistics.median(cold), "restored_ttft_s": statistics.median(warm),
           "kv_restored_ttft_s": statistics.median(warm_kv)}
    out["ttft_speedup_restore_counted"] = out["cold_ttft_s"] / (out["restore_s"] + out["restored_ttft_s"])
    out["ttft_speedup_kv_restore_counted"] = out["cold_ttft_s"] / (out["restore_kv_s"] + out["kv_restored_ttft_s"])
    return out


def _reported(fn) -> tuple[float, float]:
    """(seconds the caller waited, seconds the engine core reported for the call)."""
    t0 = time.perf_counter()
    reply = fn()
    waited = time.perf_counter() - t0
    core = reply.get("seconds_core", reply.get("seconds"))
    return waited, core if core is not None else float("nan")


def _medians(**samples: list[tuple[float, float]]) -> dict:
    out = {}
    for name, pairs in samples.items():
        out[f"{name}_s"] = statistics.median(w for w, _ in pairs)
        out[f"{name}_core_s"] = statistics.median(c for _, c in pairs)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thaw-serve-bench-")
    snaps, logs = os.path.join(work, "snaps"), os.path.join(work, "logs")
    os.makedirs(snaps), os.makedirs(logs)
    model = str(build_tiny_llama(os.path.join(work, "model"), MODEL))
    context = [4 + (i * 7919) % 500 for i in range(args.context)]
    worker_cores = {min(os.sched_getaffinity(0))}  # vLLM's auto binding gave the worker core 0 here
    paths = {"inprocess_one_core": engine_paths(model, context, snaps, args.reps, "inprocess", worker_cores),
             "inprocess": engine_paths(model, context, snaps, args.reps, "inprocess"),
             "multiprocess": engine_paths(model, context, snaps, args.reps, "multiprocess")}
    paths["server"] = server_path(model, context, snaps, args.reps, logs)
    keys = ("snapshot_s", "restore_s", "restore_kv_s")
    ratios = {f"{name}_vs_{base}": {k: round(paths[name][k] / paths[base][k], 3) for k in keys}
              for base in ("inprocess_one_core", "inprocess") for name in ("multiprocess", "server")}
    results = {"context_tokens": args.context, "reps": args.reps, "paths": paths, "ratios": ratios,
               "worker_cores": sorted(worker_cores), "cores": sorted(os.sched_getaffinity(0)),
               "model": {"layers": MODEL.num_hidden_layers, "hidden": MODEL.hidden_size,
                         "intermediate": MODEL.intermediate_size, "heads": MODEL.num_attention_heads,
                         "kv_heads": MODEL.num_key_value_heads, "head_dim": MODEL.head_dim, "dtype": "float32"},
               "includes": "each *_s time is the caller's: driver call or HTTP request to its reply; *_core_s is "
                           "what the engine core reported for the same call; snapshot includes KV and weights; "
                           "restore includes KV and weights into a dummy-weight engine; restore_kv is KV only "
                           "into the parent engine (same weights); TTFT speedups count the restore; inprocess_one_core is the "
                           "in-process engine on the one core vLLM binds its CPU worker process to (the like-for-like "
                           "base for thaw's worker-side work), inprocess the same engine on all cores"}
    print(results)
    print("receipt:", write_receipt("serve_overhead", results))


if __name__ == "__main__":
    main()
