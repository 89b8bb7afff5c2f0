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
Reported: medians, and the multiprocess and server paths as ratios to the in-process one.
Usage: python benchmarks/serve_overhead.py [--context 8192] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

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


def engine_paths(model: str, context: list[int], snaps: str, reps: int, mode: str) -> dict:
    config = {"model": model, "max_model_len": len(context) + 64, "kv_cache_memory_bytes": KV_CACHE_BYTES,
              "thaw_engine": mode}
    path = os.path.join(snaps, f"{mode}.thaw")
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
    paths = {mode: engine_paths(model, context, snaps, args.reps, mode) for mode in ("inprocess", "multiprocess")}
    paths["server"] = server_path(model, context, snaps, args.reps, logs)
    base = paths["inprocess"]
    ratios = {f"{name}_vs_inprocess": {k: round(p[k] / base[k], 3) for k in ("snapshot_s", "restore_s", "restore_kv_s")}
              for name, p in paths.items() if name != "inprocess"}
    results = {"context_tokens": args.context, "reps": args.reps, "paths": paths, "ratios": ratios,
               "model": {"layers": MODEL.num_hidden_layers, "hidden": MODEL.hidden_size,
                         "intermediate": MODEL.intermediate_size, "heads": MODEL.num_attention_heads,
                         "kv_heads": MODEL.num_key_value_heads, "head_dim": MODEL.head_dim, "dtype": "float32"},
               "includes": "each *_s time is the caller's: driver call or HTTP request to its reply; *_core_s is "
                           "what the engine core reported for the same call; snapshot includes KV and weights; "
                           "restore includes KV and weights into a dummy-weight engine; restore_kv is KV only "
                           "into the parent engine (same weights); TTFT speedups count the restore"}
    print(results)
    print("receipt:", write_receipt("serve_overhead", results))


if __name__ == "__main__":
    main()
