"""The fork round on vLLM and on SGLang, one after the other, in one run on one card.

The same model (the 8B-shaped bf16 Llama of gpu_e2e_vllm.py, random weights) and trunk in
each engine, each in its own process with its own packages (`--vllm-path`, `--sglang-path`:
the PYTHONPATH its process gets; the two engines pin different transformers). Each engine:
boot with the real weights, warm up on a short unrelated prompt, prefill the trunk, write a
KV-only snapshot of it, `prepare` that file, then `--rounds` rounds of: empty the prefix
cache, restore the trunk's KV from the file (checked), 4 branches x 64 tokens. Both engines
decode with CUDA graphs (SGLang's captured up to batch 8), so decoding is like for like;
SGLang with its overlap scheduler, as it serves on a GPU by default (until 83b88e4's
receipt it ran without, the CPU setting thaw's driver defaults to), and its Triton decode
attention split 16 ways (see GPU_CONFIGS; fork_round_anatomy.py shows where a round goes).
The branches go to each engine as one batch (SGLang: one batched request, since 2026-12-06;
before, four requests gathered, which its scheduler could take in two prefill steps).
Reported per engine: median round, thaw's share (the restore call) and decoding apart, the
cached tokens of every branch; then the SGLang/vLLM ratio of the rounds and of the shares.
A side that fails records its error instead of numbers.

`--cpu` runs the same on this machine's CPU engines with a tiny model (a check of the
script, no figures to claim).
Usage: python benchmarks/gpu_fork_engines.py [--vllm-path DIR] [--sglang-path DIR]
       [--trunk 4000] [--rounds 5] [--cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from thaw.core.registry import driver_spec
from thaw.workers import EngineWorker

from gpu_e2e_sglang import ENGINE as SGLANG_GPU
from gpu_e2e_vllm import ENGINE as VLLM_GPU
from gpu_e2e_vllm import build_model, fork_round, medians, phase, warm_up
from receipt import write_receipt

GPU_CONFIGS = {
    "vllm": VLLM_GPU,
    # SGLang 0.5.14's name for the graphs' batch limit; its overlap scheduler on, as SGLang
    # serves on a GPU by default (the driver's default is the CPU setting, off); its Triton
    # decode attention split 16 ways along the sequence instead of 8, SGLang's setting for
    # long contexts (its help text; its default on AMD): on the 4k trunk at batch 4 this took
    # the attention kernel from 92 to 52 ms a round (fork_round_anatomy receipts, 20261206)
    "sglang": {**SGLANG_GPU, "disable_cuda_graph": False, "cuda_graph_max_bs_decode": 8,
               "disable_overlap_schedule": False, "triton_attention_num_kv_splits": 16},
}


def cpu_configs(model: str, trunk: int) -> dict[str, dict]:
    from thaw.demo_fork import engine_config

    return {engine: engine_config(engine, model, trunk) for engine in ("vllm", "sglang")}


def fork_rounds(engine: str, cfg: dict, env: dict[str, str], trunk: list[int], kv_path: str, rounds: int) -> dict:
    with EngineWorker(driver_spec(engine), cfg, env=env) as w:
        info = w.call("info")
        warm_up(w, trunk)
        # and one seeded batch of branches: the sampler's first seeded rows compile or load
        # kernels (SGLang's seeded sampling is a torch.compile'd function), not timed below
        w.call("generate_many", prompt_token_ids=trunk[:64][::-1], n=4, max_tokens=2)
        w.call("reset_prefix_cache")
        prefill = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
        snapshot = w.call("snapshot", path=kv_path, weights=False)
        prepare = w.call("prepare", path=kv_path)
        measured = []
        for _ in range(rounds):
            rep, one = fork_round(w, kv_path, trunk)
            measured.append(one)
        return {"engine_version": info["identity"]["engine_version"], "boot_s": info["boot_seconds"],
                "prefill_ttft_s": prefill["seconds"], "kv_snapshot": snapshot,
                "kv_bytes": rep["kv_bytes"], "prepare_s": prepare, "rounds": measured,
                **medians(measured, "restore_s", "decode_s", "round_s")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vllm-path", default=os.environ.get("PYTHONPATH", ""))
    ap.add_argument("--sglang-path", default="/tmp/sgsite")
    ap.add_argument("--cpu", action="store_true", help="this machine's CPU engines, a tiny model")
    args = ap.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="thaw-fork-engines-")  # the tiny model, the KV snapshots
    work = scratch.name
    if args.cpu:
        from thaw.demo_fork import DEMO_MODEL
        from thaw.testing.tiny_model import build_tiny_llama

        model = str(build_tiny_llama(os.path.join(work, "model"), DEMO_MODEL))
        configs = cpu_configs(model, args.trunk)
        trunk = [4 + (i * 7919) % 500 for i in range(args.trunk)]
        r: dict = {"model": "tiny Llama (thaw.demo_fork.DEMO_MODEL), CPU: a check of the script", "engines": configs}
    else:
        r = {"model": "8B-shaped Llama, bf16, random weights", "build_model_s": build_model(args.model)}
        configs = {engine: {**cfg, "model": args.model} for engine, cfg in GPU_CONFIGS.items()}
        trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
        r["engines"] = configs
    r["trunk_tokens"] = args.trunk
    paths = {"vllm": args.vllm_path, "sglang": args.sglang_path}
    for engine in ("vllm", "sglang"):
        env = {"PYTHONPATH": paths[engine]} if paths[engine] else {}
        r[f"{engine}_packages"] = paths[engine] or "this environment's"
        kv_path = os.path.join(work, f"trunk-{engine}-kv.thaw")
        phase(r, engine, lambda: fork_rounds(engine, configs[engine], env, trunk, kv_path, args.rounds))
    try:
        r["ratio_sglang_over_vllm_round"] = r["sglang"]["median_round_s"] / r["vllm"]["median_round_s"]
        r["ratio_sglang_over_vllm_thaw_share"] = r["sglang"]["median_restore_s"] / r["vllm"]["median_restore_s"]
        r["ratio_sglang_over_vllm_decode"] = r["sglang"]["median_decode_s"] / r["vllm"]["median_decode_s"]
        # every branch of every round: the trunk's cached tokens (its full pages)
        r["min_cached_tokens"] = {engine: min(min(one["cached_tokens"]) for one in r[engine]["rounds"])
                                  for engine in ("vllm", "sglang")}
    except (KeyError, TypeError) as exc:
        r["ratios_error"] = f"a side failed: {exc!r}"
    scratch.cleanup()
    print(f"receipt: {write_receipt('fork_engines_cpu' if args.cpu else 'gpu_fork_engines', r)}")


if __name__ == "__main__":
    main()
