"""The fork demo: a warm parent engine, a snapshot, children restored in fresh processes.

Builds a small random Llama locally, prefills a long shared context in a parent engine,
snapshots it, measures a cold engine's time to first token on the same context, then
forks children (each a new process with dummy weights, restored from the snapshot) and
prints their cache hits, time to first token and whether their greedy output matches
the parent's.
"""

from __future__ import annotations

import argparse
import os
import time

from .core.registry import driver_spec
from .fork import fork
from .demo_workdir import demo_workdir
from .progress import Steps
from .testing.tiny_model import TinyLlama, build_tiny_llama
from .workers import EngineWorker

DEMO_MODEL = TinyLlama(hidden_size=512, intermediate_size=1024, num_hidden_layers=6,
                       num_attention_heads=8, num_key_value_heads=8, head_dim=64,
                       max_position_embeddings=16384)


def engine_config(engine: str, model: str, context: int) -> dict:
    """Room for the context (and, for SGLang's token pool, the parent's second pass)."""
    if engine == "sglang":
        return {"model": model, "context_length": context + 64, "max_total_tokens": 2 * context + 512}
    return {"model": model, "max_model_len": context + 64, "kv_cache_memory_bytes": 256 * 2**20}


README_RECEIPTS = {
    "vllm": "benchmarks/receipts/fork_cpu-20261201T121400Z-192f1719.json",
    "sglang": "benchmarks/receipts/fork_cpu_sglang-20261201T121241Z-192f1719.json",
}
"""The receipts the README's fork tables for each engine come from."""

SGLANG_CPU_TTFT = (
    "On CPU, SGLang runs the torch_native attention backend, which computes an extend by\n"
    "running causal attention over the whole sequence even when the prefix is cached. A hit\n"
    "skips the prefix's projections and MLPs (the 'prefilled' column: only the tokens after the\n"
    "cached pages are run through the model), but not that attention, so on this backend the\n"
    "children's time to first token stays near a cold engine's. The cache hit and the greedy\n"
    "match are what this demo shows for SGLang on CPU.")


def run_fork_demo(args: argparse.Namespace) -> int:
    with demo_workdir(args.workdir, args.keep, "thaw-fork-demo-",
                      kept="files kept in {workdir} (model/, parent.thaw)",
                      removed="removed {workdir} (the model and the snapshot; --keep keeps them)") as workdir:
        with Steps(quiet=args.quiet) as steps:
            ok = _run(args, workdir, steps)
    return 0 if ok else 1


def _run(args: argparse.Namespace, workdir: str, steps: Steps) -> bool:
    engine = args.engine
    with steps.step("building a small random Llama (6 layers x 512)"):
        model = str(build_tiny_llama(os.path.join(workdir, "model"), DEMO_MODEL))
    context = [4 + (i * 7919) % 500 for i in range(args.context)]
    config = engine_config(engine, model, args.context)
    snap = os.path.join(workdir, "parent.thaw")
    print(f"model: 6 layers x 512 wide, random weights, in {model}")
    with steps.step(f"parent: starting the {engine} engine"):
        parent = EngineWorker(driver_spec(engine), config)
    with parent:
        with steps.step(f"parent: prefilling the shared context ({args.context} tokens)"):
            parent.call("generate", prompt_token_ids=context, max_tokens=1)
            ref = parent.call("generate", prompt_token_ids=context, max_tokens=args.max_tokens)
        with steps.step(f"parent: snapshot to {snap}"):
            t0 = time.perf_counter()
            parent.call("snapshot", path=snap)
            took = time.perf_counter() - t0
    print(f"parent ({engine}): prefilled {args.context} tokens; snapshot {snap} written in {took:.2f} s "
          f"({os.path.getsize(snap) / 2**20:.1f} MiB)")
    with steps.step(f"cold engine: starting {engine} and prefilling the same context"):
        with EngineWorker(driver_spec(engine), config) as cold:
            cold_first = cold.call("generate", prompt_token_ids=context, max_tokens=1)
    print(f"cold engine: time to first token {cold_first['seconds'] * 1e3:.0f} ms "
          f"({cold_first['cached_tokens']} cached tokens)")
    children = fork(snap, args.children, engine=engine, engine_config={**config, "load_format": "dummy"},
                    prompt=context, max_tokens=args.max_tokens, temperature=1.0, progress=steps.step)
    steps.close()
    print(f"\n{args.children} children, each a fresh process with dummy weights, restored from {snap}:")
    speedup = engine != "sglang"
    print(f"{'child':>5} {'cached':>7} {'prefilled':>9} {'restore ms':>10} {'TTFT ms':>8} "
          + (f"{'speed-up':>8}  " if speedup else "") + f"{'greedy = parent':>15}  sampled continuation (seed)")
    ok = True
    for c in children:
        match = c.greedy_tokens == ref["tokens"]
        ok &= match and c.cached_tokens > 0
        print(f"{c.index:>5} {c.cached_tokens:>7} {len(context) - c.cached_tokens:>9} "
              f"{c.restore_seconds * 1e3:>10.0f} {c.ttft_seconds * 1e3:>8.1f} "
              + (f"{cold_first['seconds'] / c.ttft_seconds:>7.1f}x  " if speedup else "")
              + f"{str(match):>15}  {c.tokens[:8]} ({c.seed})")
    print()
    print("children hit the parent's prefix, match its greedy output, and diverge when sampled"
          if ok else "SOMETHING DID NOT MATCH")
    if not speedup:
        print(SGLANG_CPU_TTFT)
    print(f"These timings are from this machine. The README's fork table for {engine} comes from "
          f"{README_RECEIPTS[engine]} (benchmarks/fork_cpu.py; the receipt names its CPU).")
    return ok
