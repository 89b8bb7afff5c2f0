"""What running vLLM as people deploy it costs thaw: the same snapshot and restore through
the in-process engine, vLLM's default multiprocess `LLM` (thaw in the engine core and the
worker), and a running server (`vllm serve` with thaw's middleware, over HTTP), in one run.

For one shared prefix (default 8,192 tokens) on an 8-layer GQA model (hidden 1024, 2 KV
heads of 64), each path:
  - snapshot: the parent's snapshot of that prefix (KV and weights), timed by the caller
    (driver call, or the HTTP client for the server), with the time the engine core
    reported (`core_s`) and its phases (capture, write, flush to disk);
  - restore, two kinds, each into an empty prefix cache (reset before every repetition):
    `restore_s` KV and weights into a booted engine with dummy weights (a fresh worker);
    `restore_kv_s` KV only into the parent itself (a warm engine with those weights);
  - for the server also the first token on the prefix: cold prefill (cache reset) against
    a restore followed by the first token, restore counted, for both restore kinds.
The paths' engines run side by side and take turns in every repetition, each repetition
starting one path further on, so that the machine's drift (other load, the disk's
flushes) falls on every path alike and no path always follows the same other one.
Reported: medians, and the multiprocess and server paths as ratios to the in-process one,
twice: against the in-process engine on the single core that vLLM's CPU backend binds a
worker process to (`VLLM_CPU_OMP_THREADS_BIND=auto` keeps the other cores for the engine
core and the server; like for like: thaw's worker-side work gets one core in every path),
and against the unpinned in-process engine (all cores), shown apart. Snapshots are also
compared without their flush to disk (`snapshot_cache_s`: capture + write into the page
cache), the part of the call a path can change.
Usage: python benchmarks/serve_overhead.py [--context 8192] [--reps 16] [--ttft-reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Optional

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
SERVER_ARGS = ("--dtype", "float32", "--block-size", "32", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
               "--enforce-eager")


class DriverPath:
    """One driver engine (in-process or multiprocess), started on `cores` if given."""

    def __init__(self, config: dict, path: str, cores: Optional[set[int]] = None) -> None:
        everywhere = os.sched_getaffinity(0)
        if cores:
            os.sched_setaffinity(0, cores)  # inherited by the engine's process, started now
        try:
            self.worker = EngineWorker(DRIVER, config)
        finally:
            os.sched_setaffinity(0, everywhere)
        self.path = path

    def generate(self, context: list[int]) -> int:
        return self.worker.call("generate", prompt_token_ids=context, max_tokens=1)["cached_tokens"]

    def reset(self) -> None:
        self.worker.call("reset_prefix_cache")

    def thaw(self, op: str, source: "DriverPath", **body: Any) -> dict:
        return self.worker.call(op, path=source.path, **body)

    def close(self) -> None:
        self.worker.close()


class ServerPath:
    """One `vllm serve` process with thaw's middleware, reached over HTTP."""

    def __init__(self, model: str, snaps: str, log: str, context_len: int, *extra: str) -> None:
        self.server = VLLMServer(model, snaps, log, *SERVER_ARGS, "--max-model-len", str(context_len + 64), *extra,
                                 api_key=KEY, env={"VLLM_SERVER_DEV_MODE": "1"})  # /reset_prefix_cache
        self.path = "server.thaw"

    def generate(self, context: list[int]) -> int:
        return self.server.complete(context, max_tokens=1)[1]

    def reset(self) -> None:
        self.server.post("/reset_prefix_cache")

    def thaw(self, op: str, source: "ServerPath", **body: Any) -> dict:
        return call(self.server.url, op, {"path": source.path, **body}, api_key=KEY)

    def close(self) -> None:
        self.server.stop()


SETTLE_S = 1.5  # longer than vLLM's reader spin after a queue read (SpinCondition.busy_loop_s, 1 s)


def sample(fn: Callable[[], dict]) -> dict:
    """The caller's seconds, the engine core's, and the phases it reported, of one call."""
    t0 = time.perf_counter()
    reply = fn()
    waited = time.perf_counter() - t0
    core = reply.get("seconds_core", reply.get("seconds"))
    return {"s": waited, "core_s": core if isinstance(core, (int, float)) else float("nan"),
            "phases": reply.get("seconds_by_phase") or {}}


def medians(name: str, samples: list[dict]) -> dict:
    quartiles = statistics.quantiles([x["s"] for x in samples], n=4)
    out = {f"{name}_s": statistics.median(x["s"] for x in samples),
           f"{name}_quartiles_s": [quartiles[0], quartiles[2]],  # the spread around the median
           f"{name}_core_s": statistics.median(x["core_s"] for x in samples)}
    phases = {k for x in samples for k in x["phases"]}
    if phases:
        out[f"{name}_phases_s"] = {k: statistics.median(x["phases"].get(k, 0.0) for x in samples) for k in phases}
    if "flush" in phases:  # the call without its flush to disk
        out[f"{name}_cache_s"] = statistics.median(x["s"] - x["phases"].get("flush", 0.0) for x in samples)
    return out


def taking_turns(paths: dict, reps: int, fn: Callable[[Any], dict], before: Optional[Callable] = None) -> dict:
    """`fn(path)` for every path, one after another, `reps` times over; each repetition starts
    one path further on (no path always follows the same other path, e.g. its flush to disk
    right after another path's), and each call starts `SETTLE_S` after the previous one: a
    vLLM worker process spins on its queue for a second after each call (the one core it is
    bound to is the one-core base's), which would otherwise be timed as the next path's."""
    out: dict[str, list[dict]] = {name: [] for name in paths}
    names = list(paths)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            p = paths[name]
            if before:
                before(p)
            time.sleep(SETTLE_S)  # the last call's worker stops spinning before the next is timed
            out[name].append(sample(lambda: fn(p)))
    return out


def run(model: str, context: list[int], snaps: str, logs: str, reps: int, ttft_reps: int) -> dict:
    config = {"model": model, "max_model_len": len(context) + 64, "kv_cache_memory_bytes": KV_CACHE_BYTES}
    worker_cores = {min(os.sched_getaffinity(0))}  # the core vLLM's auto binding gave its worker here
    starts = {"inprocess_one_core": lambda dummy: DriverPath({**config, "thaw_engine": "inprocess", **dummy},
                                                             os.path.join(snaps, "one_core.thaw"), worker_cores),
              "inprocess": lambda dummy: DriverPath({**config, "thaw_engine": "inprocess", **dummy},
                                                    os.path.join(snaps, "inprocess.thaw")),
              "multiprocess": lambda dummy: DriverPath({**config, "thaw_engine": "multiprocess", **dummy},
                                                       os.path.join(snaps, "multiprocess.thaw")),
              "server": lambda dummy: ServerPath(model, snaps, os.path.join(logs, f"server{len(dummy)}.log"),
                                                 len(context), *(["--load-format", "dummy"] if dummy else []))}
    results: dict[str, dict] = {name: {} for name in starts}
    with contextlib.ExitStack() as stack:
        parents = {name: start({}) for name, start in starts.items()}
        for p in parents.values():
            stack.callback(p.close)
        if "server" in parents:
            parents["server"].server.wait()
        for p in parents.values():
            p.generate(context)
        for name, s in taking_turns(parents, reps, lambda p: p.thaw("snapshot", p)).items():
            results[name].update(medians("snapshot", s))
        restored = taking_turns(parents, reps, lambda p: p.thaw("restore", p, weights=False), lambda p: p.reset())
        for name, s in restored.items():
            results[name].update(medians("restore_kv", s))
        server = parents["server"]
        cold, warm_kv = [], []
        for _ in range(ttft_reps):
            server.reset()
            cold.append(sample(lambda: {"cached": server.generate(context)})["s"])
            server.reset()
            t_restore = sample(lambda: server.thaw("restore", server, weights=False))["s"]
            t0 = time.perf_counter()
            cached_kv = server.generate(context)
            warm_kv.append(t_restore + time.perf_counter() - t0)
        results["server"].update(cold_ttft_s=statistics.median(cold), kv_restore_and_ttft_s=statistics.median(warm_kv),
                                 cached_tokens_after_kv_restore=cached_kv)
    with contextlib.ExitStack() as stack:
        children = {name: start({"load_format": "dummy"}) for name, start in starts.items()}
        for p in children.values():
            stack.callback(p.close)
        children["server"].server.wait()
        source = {id(children[n]): parents[n] for n in children}  # the parent whose snapshot it restores
        restored = taking_turns(children, reps, lambda p: p.thaw("restore", source[id(p)]), lambda p: p.reset())
        for name, s in restored.items():
            results[name].update(medians("restore", s))
            results[name]["cached_tokens_after_restore"] = children[name].generate(context)
        server = children["server"]
        warm = []
        for _ in range(ttft_reps):
            server.reset()
            t_restore = sample(lambda: server.thaw("restore", parents["server"]))["s"]
            t0 = time.perf_counter()
            server.generate(context)
            warm.append(t_restore + time.perf_counter() - t0)
        results["server"]["restore_and_ttft_s"] = statistics.median(warm)
    s = results["server"]
    s["ttft_speedup_kv_restore_counted"] = s["cold_ttft_s"] / s["kv_restore_and_ttft_s"]
    s["ttft_speedup_restore_counted"] = s["cold_ttft_s"] / s["restore_and_ttft_s"]
    return {"paths": results, "worker_cores": sorted(worker_cores)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=16, help="repetitions of each snapshot and restore")
    ap.add_argument("--ttft-reps", type=int, default=3, help="repetitions of the first-token runs (a cold "
                    "prefill of the prefix takes about 30 s on 2 cores)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thaw-serve-bench-")
    snaps, logs = os.path.join(work, "snaps"), os.path.join(work, "logs")
    os.makedirs(snaps), os.makedirs(logs)
    model = str(build_tiny_llama(os.path.join(work, "model"), MODEL))
    context = [4 + (i * 7919) % 500 for i in range(args.context)]
    out = run(model, context, snaps, logs, args.reps, args.ttft_reps)
    paths = out["paths"]
    keys = ("snapshot_s", "snapshot_cache_s", "restore_s", "restore_kv_s")
    ratios = {f"{name}_vs_{base}": {k: round(paths[name][k] / paths[base][k], 3) for k in keys}
              for base in ("inprocess_one_core", "inprocess") for name in ("multiprocess", "server")}
    results = {"context_tokens": args.context, "reps": args.reps, "ttft_reps": args.ttft_reps, **out, "ratios": ratios,
               "cores": sorted(os.sched_getaffinity(0)),
               "model": {"layers": MODEL.num_hidden_layers, "hidden": MODEL.hidden_size,
                         "intermediate": MODEL.intermediate_size, "heads": MODEL.num_attention_heads,
                         "kv_heads": MODEL.num_key_value_heads, "head_dim": MODEL.head_dim, "dtype": "float32"},
               "includes": "each *_s time is the caller's: driver call or HTTP request to its reply; *_core_s is "
                           "what the engine core reported for the same call; snapshot includes KV and weights "
                           "and the flush to disk (snapshot_cache_s leaves the flush out); restore includes KV "
                           "and weights into a dummy-weight engine; restore_kv is KV only into the parent engine "
                           "(same weights); TTFT speedups count the restore; inprocess_one_core is the in-process "
                           "engine on the one core vLLM binds its CPU worker process to (the like-for-like base "
                           "for thaw's worker-side work), inprocess the same engine on all cores; the paths' "
                           "engines run side by side and take turns in each repetition, the order rotated by one "
                           "path every repetition, each call 1.5 s after the previous one"}
    print(results)
    print("receipt:", write_receipt("serve_overhead", results))


if __name__ == "__main__":
    main()
