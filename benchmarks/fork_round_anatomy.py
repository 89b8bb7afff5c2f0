"""Where a fork round's decoding time goes, on vLLM and on SGLang, in one run on one card.

The engines, model and trunk of gpu_fork_engines.py (8B-shaped bf16 Llama, 4k trunk, CUDA
graphs, SGLang's overlap scheduler on). Each engine in its own process, its driver built
in that process (so the script reaches the engine itself). After the trunk's KV snapshot
is prepared, every measured call is preceded by emptying the prefix cache and restoring the
trunk's KV from the file, as in a fork round; then, `--reps` times each (median kept):
  round        4 branches x 64 tokens, temperature 1, a seed per branch (the fork round)
  greedy       the same, temperature 0
  tokens_1     the same as round with 1 token per branch (the 16-token extend + first token)
  tokens_16    16 tokens per branch; (round - tokens_16) / 48 is one decode step at batch 4
  SGLang also:
  gathered     round's branches sent as four requests gathered on the event loop (what the
               driver did before c6eadc7; since, `round` sends them as one batched request;
               the receipts of 20261206T11 ran before it, where this variant was `one_batch`,
               the batched request beside a gathered `round`)
  no_seed      round without per-branch seeds (SGLang samples seeded rows another way)
and one `round` under the PyTorch profiler (GPU activity only): the kernels' summed time,
the span from first kernel start to last kernel end, and the top kernels by time.
Each engine's result records the config its driver was given (over the driver's
defaults). A failing engine records its error in the receipt.
`--cpu` runs the same on this machine's CPU engines with a tiny model (a check of the
script, no figures to claim).
Usage: python benchmarks/fork_round_anatomy.py [--vllm-path DIR] [--sglang-path DIR] [--reps 3] [--cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import gzip
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

from receipt import write_receipt

BRANCHES, TOKENS = 4, 64


def kernel_summary(events: list[dict], top: int = 15) -> dict[str, Any]:
    """Summed kernel time, first-start-to-last-end span, and the `top` kernels by time, from
    chrome-trace events (microseconds)."""
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        return {"kernels": 0}
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        by_name[e["name"]].append(e["dur"])
    start = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"kernels": len(kernels), "kernel_ms": sum(e["dur"] for e in kernels) / 1e3,
            "span_ms": (end - start) / 1e3,
            "top": [{"name": name[:120], "calls": len(d), "ms": sum(d) / 1e3} for name, d in ranked]}


class Round:
    """Restores the trunk's KV into the driver's empty cache, then runs `submit` timed."""

    def __init__(self, driver: Any, kv_path: str) -> None:
        self.driver, self.kv_path = driver, kv_path

    def __call__(self, submit: Callable[[], Any]) -> float:
        self.driver.reset_prefix_cache()
        self.driver.restore(self.kv_path, weights=False, requests=False)
        t0 = time.perf_counter()
        submit()
        return time.perf_counter() - t0


def sglang_extras(driver: Any, trunk: list[int]) -> dict[str, Callable[[], Any]]:
    engine = driver.engine

    def gathered(seeded: bool) -> Callable[[], Any]:
        return lambda: driver._run(asyncio.gather(*[engine.async_generate(
            input_ids=trunk, sampling_params=driver._sampling(TOKENS, 1.0, i if seeded else None))
            for i in range(BRANCHES)]))

    return {"gathered": gathered(True), "no_seed": gathered(False)}


def profiled(engine_name: str, driver: Any, run: Callable[[], float], out_dir: str, cpu: bool) -> dict[str, Any]:
    """One call of `run` under the PyTorch profiler (GPU activity only; CPU activity with
    `cpu`, where it finds no kernels), summarised."""
    if engine_name == "sglang":
        driver.engine.start_profile(output_dir=out_dir, activities=["CPU" if cpu else "GPU"], with_stack=False,
                                    record_shapes=False)
        seconds = run()
        driver.engine.stop_profile()
        traces = sorted(glob.glob(os.path.join(out_dir, "*.trace.json*")))
        with (gzip.open if traces[-1].endswith(".gz") else open)(traces[-1], "rt") as f:
            events = json.load(f)["traceEvents"]
    else:
        import torch

        activity = torch.profiler.ProfilerActivity.CPU if cpu else torch.profiler.ProfilerActivity.CUDA
        with torch.profiler.profile(activities=[activity]) as prof:
            seconds = run()
        path = os.path.join(out_dir, "vllm.trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return {"seconds": seconds, **kernel_summary(events)}


def one_engine(engine_name: str, model: str, trunk_len: int, reps: int, cpu: bool,
               extra: dict[str, Any]) -> dict[str, Any]:
    from gpu_fork_engines import GPU_CONFIGS, cpu_configs

    from thaw.core.registry import driver_spec

    work = tempfile.mkdtemp(prefix=f"thaw-anatomy-{engine_name}-")
    trunk = ([4 + (i * 7919) % 500 for i in range(trunk_len)] if cpu  # the tiny model's vocabulary
             else [100 + (i * 7919) % 120000 for i in range(trunk_len)])
    module, _, cls = driver_spec(engine_name).partition(":")
    config = {**(cpu_configs(model, trunk_len)[engine_name] if cpu else {**GPU_CONFIGS[engine_name], "model": model}),
              **extra}
    driver = getattr(importlib.import_module(module), cls)(config)
    try:
        return {"config": config, **measure(engine_name, driver, trunk, work, reps, cpu)}
    finally:
        if hasattr(driver, "close"):  # SGLang's scheduler processes go with it
            driver.close()
        shutil.rmtree(work)  # the trunk's KV snapshot and the profiler's trace


def measure(engine_name: str, driver: Any, trunk: list[int], work: str, reps: int, cpu: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"engine_version": driver.info()["identity"]["engine_version"]}
    driver.generate(trunk[:64][::-1], max_tokens=2)
    driver.reset_prefix_cache()
    driver.generate(trunk, max_tokens=1)
    kv_path = os.path.join(work, "trunk-kv.thaw")
    driver.snapshot(kv_path, weights=False)
    driver.prepare(kv_path)
    round_ = Round(driver, kv_path)

    def many(max_tokens: int, temperature: float) -> Callable[[], Any]:
        return lambda: driver.generate_many(trunk, n=BRANCHES, max_tokens=max_tokens, temperature=temperature)

    variants = {"round": many(TOKENS, 1.0), "greedy": many(TOKENS, 0.0), "tokens_1": many(1, 1.0),
                "tokens_16": many(16, 1.0)}
    if engine_name == "sglang":
        variants.update(sglang_extras(driver, trunk))
    round_(variants["round"])  # first seeded round: kernels compiled or loaded on first use
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):  # interleaved, so a drift of the card's clocks touches every variant alike
        for name, submit in variants.items():
            times[name].append(round_(submit))
    out["seconds"] = times
    out["median_s"] = {name: statistics.median(t) for name, t in times.items()}
    med = out["median_s"]
    out["decode_step_ms"] = (med["round"] - med["tokens_16"]) / (TOKENS - 16) * 1e3
    out["profile_round"] = profiled(engine_name, driver, lambda: round_(variants["round"]), work, cpu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vllm-path", default=os.environ.get("PYTHONPATH", ""))
    ap.add_argument("--sglang-path", default="/tmp/sgsite")
    ap.add_argument("--engines", default="vllm,sglang")
    ap.add_argument("--sglang-extra", default="{}", help="JSON: settings over SGLang's config of gpu_fork_engines.py")
    ap.add_argument("--cpu", action="store_true", help="this machine's CPU engines, a tiny model (a check of the script)")
    ap.add_argument("--one", choices=("vllm", "sglang"), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        with open(args.result, "w") as f:
            json.dump(one_engine(args.one, args.model, args.trunk, args.reps, args.cpu,
                                 json.loads(args.sglang_extra) if args.one == "sglang" else {}), f)
        os._exit(0)  # the engine's own threads and children must not hold the process
    r: dict[str, Any] = {"trunk_tokens": args.trunk, "branches": BRANCHES, "tokens": TOKENS,
                         "sglang_extra": json.loads(args.sglang_extra)}
    scratch = tempfile.TemporaryDirectory(prefix="thaw-anatomy-")  # each engine's result; the tiny model
    if args.cpu:
        from thaw.demo_fork import DEMO_MODEL
        from thaw.testing.tiny_model import build_tiny_llama

        args.model = str(build_tiny_llama(os.path.join(scratch.name, "model"), DEMO_MODEL))
        r["model"] = "tiny Llama (thaw.demo_fork.DEMO_MODEL), CPU: a check of the script"
    else:
        from gpu_e2e_vllm import build_model

        r.update(model="8B-shaped Llama, bf16, random weights", build_model_s=build_model(args.model))
    paths = {"vllm": args.vllm_path, "sglang": args.sglang_path}
    for engine in args.engines.split(","):
        path = paths[engine]
        result = os.path.join(scratch.name, f"{engine}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--one", engine, "--result", result,
               "--model", args.model, "--trunk", str(args.trunk), "--reps", str(args.reps),
               "--sglang-extra", args.sglang_extra] + ["--cpu"] * args.cpu
        proc = subprocess.run(cmd, env={**os.environ, **({"PYTHONPATH": path} if path else {})},
                              capture_output=True, text=True)
        if proc.returncode == 0 and os.path.exists(result):
            with open(result) as f:
                r[engine] = json.load(f)
        else:
            r[engine] = {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        print(f"{engine}: {json.dumps(r[engine])[:1500]}", flush=True)
    scratch.cleanup()
    print(f"receipt: {write_receipt('fork_round_anatomy_cpu' if args.cpu else 'fork_round_anatomy', r)}")


if __name__ == "__main__":
    main()
