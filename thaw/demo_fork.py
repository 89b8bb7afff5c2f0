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
import tempfile
import time

from .fork import DRIVERS, fork
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


def run_fork_demo(args: argparse.Namespace) -> int:
    workdir = args.workdir or tempfile.mkdtemp(prefix="thaw-fork-demo-")
    os.makedirs(workdir, exist_ok=True)
    model = str(build_tiny_llama(os.path.join(workdir, "model"), DEMO_MODEL))
    context = [4 + (i * 7919) % 500 for i in range(args.context)]
    engine = args.engine
    config = engine_config(engine, model, args.context)
    snap = os.path.join(workdir, "parent.thaw")
    print(f"model: 6 layers x 512 wide, random weights, in {model}")
    print(f"parent ({engine}): prefilling a shared context of {args.context} tokens ...")
    with EngineWorker(DRIVERS[engine], config) as parent:
        parent.call("generate", prompt_token_ids=context, max_tokens=1)
        ref = parent.call("generate", prompt_token_ids=context, max_tokens=args.max_tokens)
        t0 = time.perf_counter()
        parent.call("snapshot", path=snap)
        print(f"parent: snapshot written in {time.perf_counter() - t0:.2f} s "
              f"({os.path.getsize(snap) / 2**20:.1f} MiB)")
    with EngineWorker(DRIVERS[engine], config) as cold:
        cold_first = cold.call("generate", prompt_token_ids=context, max_tokens=1)
    print(f"cold engine: time to first token {cold_first['seconds'] * 1e3:.0f} ms "
          f"({cold_first['cached_tokens']} cached tokens)")
    print(f"forking {args.children} children (fresh processes, dummy weights, restored) ...")
    children = fork(snap, args.children, engine=engine,
                    engine_config={**config, "load_format": "dummy"}, prompt=context,
                    max_tokens=args.max_tokens, temperature=1.0)
    print()
    print(f"{'child':>5} {'cached':>7} {'restore ms':>10} {'TTFT ms':>8} {'speed-up':>8}  "
          f"{'greedy = parent':>15}  sampled continuation (seed)")
    ok = True
    for c in children:
        match = c.greedy_tokens == ref["tokens"]
        ok &= match and c.cached_tokens > 0
        print(f"{c.index:>5} {c.cached_tokens:>7} {c.restore_seconds * 1e3:>10.0f} "
              f"{c.ttft_seconds * 1e3:>8.1f} {cold_first['seconds'] / c.ttft_seconds:>7.1f}x  "
              f"{str(match):>15}  {c.tokens[:8]} ({c.seed})")
    print()
    print("children hit the parent's prefix, match its greedy output, and diverge when sampled"
          if ok else "SOMETHING DID NOT MATCH")
    return 0 if ok else 1
