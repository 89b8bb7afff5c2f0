"""What running vLLM as people deploy it costs thaw: the same snapshot and restore through
the in-process engine, vLLM's default multiprocess `LLM` (thaw in the engine core and the
worker), and a running server (`vllm serve` with thaw's middleware, over HTTP), in one run.

For one shared prefix (default 2,048 tokens) on the built-in 6-layer model, each path:
  - snapshot: the parent's snapshot of that prefix (KV and weights), timed by the caller
    of the handle (driver call, or the HTTP client for the server);
  - restore: into a booted engine with dummy weights and an empty prefix cache (reset
    before each repetition), KV and weights, timed the same way;
  - for the server also the restored first token against the same server's cold prefill
    (cache reset), restore counted: (restore + restored TTFT) vs cold TTFT.
Reported: medians, and the multiprocess and server paths as ratios to the in-process one.
Usage: python benchmarks/serve_overhead.py [--context 2048] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from thaw.demo_fork import DEMO_MODEL
from thaw.http_client import call
from thaw.testing.tiny_model import build_tiny_llama
from thaw.testing.vllm_server import VLLMServer
from thaw.workers import EngineWorker

from receipt import write_receipt

DRIVER = "thaw.adapters.vllm.driver:VLLMDriver"
KEY = "bench"


def engine_paths(model: str, context: list[int], snaps: str, reps: int, mode: str) -> dict:
    config = {"model": model, "max_model_len": len(context) + 64, "kv_cache_memory_bytes": 256 * 2**20,
              "thaw_engine": mode}
    path = os.path.join(snaps, f"{mode}.thaw")
    with EngineWorker(DRIVER, config) as parent:
        parent.call("generate", prompt_token_ids=context, max_tokens=1)
        snapshot = [_timed(lambda: parent.call("snapshot", path=path)) for _ in range(reps)]
    with EngineWorker(DRIVER, {**config, "load_format": "dummy"}) as child:
        restore = []
        for _ in range(reps):
            child.call("reset_prefix_cache")
            restore.append(_timed(lambda: child.call("restore", path=path)))
        first = child.call("generate", prompt_token_ids=context, max_tokens=1)
    return {"snapshot_s": statistics.median(snapshot), "restore_s": statistics.median(restore),
            "cached_tokens_after_restore": first["cached_tokens"]}


def server_path(model: str, context: list[int], snaps: str, reps: int, logs: str) -> dict:
    args = ("--dtype", "float32", "--max-model-len", str(len(context) + 64), "--block-size", "32",
            "--kv-cache-memory-bytes", str(256 * 2**20), "--enforce-eager")
    parent = VLLMServer(model, snaps, os.path.join(logs, "parent.log"), *args, api_key=KEY)
    child = VLLMServer(model, snaps, os.path.join(logs, "child.log"), *args, "--load-format", "dummy",
                       api_key=KEY, env={"VLLM_SERVER_DEV_MODE": "1"})
    try:
        parent.wait(), child.wait()
        parent.complete(context, max_tokens=1)
        snapshot = [_timed(lambda: call(parent.url, "snapshot", {"path": "server.thaw"}, api_key=KEY))
                    for _ in range(reps)]
        restore, cold, warm = [], [], []
        for _ in range(reps):
            child.post("/reset_prefix_cache")
            cold.append(_timed(lambda: child.complete(context, max_tokens=1)))
            child.post("/reset_prefix_cache")
            restore.append(_timed(lambda: call(child.url, "restore", {"path": "server.thaw"}, api_key=KEY)))
            t0 = time.perf_counter()
            _, cached = child.complete(context, max_tokens=1)
            warm.append(time.perf_counter() - t0)
    finally:
        parent.stop()
        child.stop()
    out = {"snapshot_s": statistics.median(snapshot), "restore_s": statistics.median(restore),
           "cached_tokens_after_restore": cached, "cold_ttft_s": statistics.median(cold),
           "restored_ttft_s": statistics.median(warm)}
    out["ttft_speedup_restore_counted"] = out["cold_ttft_s"] / (out["restore_s"] + out["restored_ttft_s"])
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thaw-serve-bench-")
    snaps, logs = os.path.join(work, "snaps"), os.path.join(work, "logs")
    os.makedirs(snaps), os.makedirs(logs)
    model = str(build_tiny_llama(os.path.join(work, "model"), DEMO_MODEL))
    context = [4 + (i * 7919) % 500 for i in range(args.context)]
    paths = {mode: engine_paths(model, context, snaps, args.reps, mode) for mode in ("inprocess", "multiprocess")}
    paths["server"] = server_path(model, context, snaps, args.reps, logs)
    base = paths["inprocess"]
    ratios = {f"{name}_vs_inprocess": {k: round(p[k] / base[k], 3) for k in ("snapshot_s", "restore_s")}
              for name, p in paths.items() if name != "inprocess"}
    results = {"context_tokens": args.context, "reps": args.reps, "paths": paths, "ratios": ratios,
               "model": {"layers": 6, "hidden": 512, "kv_heads": 8, "head_dim": 64, "dtype": "float32"},
               "includes": "each time is the caller's: driver call or HTTP request to its reply; "
                           "snapshot includes KV and weights; restore includes KV and weights"}
    print(results)
    print("receipt:", write_receipt("serve_overhead", results))


if __name__ == "__main__":
    main()
