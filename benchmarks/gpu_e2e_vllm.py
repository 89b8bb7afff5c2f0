"""End to end on a GPU with real vLLM: a fresh worker serving a 4k-token trunk.

One run, one card, an 8B-shaped bf16 Llama with random weights (32 layers, 8 KV heads,
head dim 128), built on the device. Measured side by side, each engine in its own process:
  cold      fresh engine boot (checkpoint in page cache) + prefill of the trunk + first token
  sleep L1  vLLM's own sleep level 1 -> wake, then the trunk (re-prefilled)
  sleep L2  level 2 -> wake + reload_weights, then the trunk (re-prefilled)
  thaw      fresh engine with dummy weights, prepare (map + register the snapshot file),
            restore weights (as vLLM parameters) + KV + prefix from the snapshot in page
            cache, then the trunk as a cache hit; weights GB/s against pinned memcpy
            measured on the same card in the same run
  fork      rounds of: restore the trunk's KV into a warm worker, then 4 branches x 64
            tokens; thaw's share of each round reported apart from decoding; once with the
            KV uploaded from the registered file each round, once with the trunk's pages
            kept on the device by `prepare(kv_on_device=True)`
A phase that fails records its error in the receipt instead of a number.
Usage: python benchmarks/gpu_e2e_vllm.py [--trunk 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import traceback

from thaw.core.registry import driver_spec
from thaw.workers import EngineWorker

from receipt import write_receipt

# Every engine alike: decode steps replayed as full CUDA graphs (no torch.compile, so a
# boot captures 4 small graphs instead of compiling).
ENGINE = {"dtype": "bfloat16", "block_size": 16, "gpu_memory_utilization": 0.42,
          "kv_cache_memory_bytes": 4 * 2**30, "max_model_len": 8192, "enforce_eager": False,
          "compilation_config": {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY",
                                 "cudagraph_capture_sizes": [1, 2, 4, 8]}}


def pinned_memcpy_gb_s(nbytes: int = 4 * 2**30, reps: int = 5, to_host: bool = False) -> float:
    """Host (pinned) -> GPU copy rate on this card (GPU -> pinned host with `to_host`): the
    link speed weights and snapshots are judged against."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    rates = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        (host.copy_(dev, non_blocking=True) if to_host else dev.copy_(host, non_blocking=True))
        torch.cuda.synchronize()
        rates.append(nbytes / (time.perf_counter() - t0) / 1e9)
    del host, dev
    torch.cuda.empty_cache()
    return statistics.median(rates)


def build_model(path: str) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if os.path.exists(os.path.join(path, "config.json")):
        return 0.0
    t0 = time.perf_counter()
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      max_position_embeddings=8192, tie_word_embeddings=False)
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    return time.perf_counter() - t0


def phase(results: dict, name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # recorded in the receipt; the run goes on to the next phase
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "trace": traceback.format_exc()[-2000:]}
    print(f"{name}: {time.perf_counter() - t0:.1f} s -> {str(results[name])[:300]}", flush=True)


def warm_up(w: EngineWorker, trunk: list[int]) -> float:
    """A short prompt unrelated to the trunk (its first 64 tokens reversed), then the prefix
    cache emptied: kernels an engine compiles or loads on its first batches (SGLang's
    Triton kernels, tens of seconds on a fresh box) stay out of what is timed next.
    Returns its seconds."""
    t0 = time.perf_counter()
    w.call("generate", prompt_token_ids=trunk[:64][::-1], max_tokens=2)
    w.call("reset_prefix_cache")
    return time.perf_counter() - t0


def cold_start(engine: str, cfg: dict, trunk: list[int]) -> tuple[dict, dict]:
    """A new engine process on the real checkpoint: start to ready, then prefill + first
    token; with the engine's `info`."""
    t0 = time.perf_counter()
    with EngineWorker(driver_spec(engine), cfg) as w:
        booted = time.perf_counter() - t0
        out = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
        info = w.call("info")
    return ({"process_start_to_ready_s": booted, "engine_boot_s": info["boot_seconds"], "ttft_s": out["seconds"],
             "total_s": booted + out["seconds"], "cached_tokens": out["cached_tokens"]}, info)


def fork_round(w: EngineWorker, path: str, trunk: list[int]) -> tuple[dict, dict]:
    """One fork round in a warm engine: empty its prefix cache, restore the trunk's KV from
    `path`, decode 4 branches x 64 tokens. Returns the restore report and the round's figures."""
    w.call("reset_prefix_cache")
    rep = w.call("restore", path=path, weights=False, requests=False)
    gen = w.call("generate_many", prompt_token_ids=trunk, n=4, max_tokens=64)
    return rep, {"restore_s": rep["seconds"], "restore_phases_s": rep["seconds_by_phase"], "kv_from": rep["kv_from"],
                 "decode_s": gen["seconds"], "round_s": rep["seconds"] + gen["seconds"],
                 "cached_tokens": gen["cached_tokens"], "distinct_branches": len({tuple(t) for t in gen["tokens"]})}


def prepared_restore(w: EngineWorker, path: str) -> tuple[float, dict, float]:
    """`prepare` then a full restore of `path`: prepare's seconds, the restore's report, and
    the seconds its weights took (stage + check + commit)."""
    prepare = w.call("prepare", path=path)
    rep = w.call("restore", path=path)
    phases = rep["seconds_by_phase"]
    return prepare, rep, phases["weights_stage"] + phases["weights"]


def medians(rounds: list[dict], *keys: str) -> dict:
    return {f"median_{k}": statistics.median(x[k] for x in rounds) for k in keys}


def first_token_ratios(r: dict) -> None:
    """The ratios every engine's end-to-end receipt has (KeyError where a phase failed)."""
    r["thaw_output_equals_parent_cached"] = r["thaw"]["tokens_out"] == r["parent"]["cached_tokens_out"]
    # New process to first token, both sides: process start, engine import and boot, then
    # prefill (cold) or restore (weights, KV) + first token (thaw).
    r["ratio_cold_over_thaw_total"] = r["cold"]["total_s"] / r["thaw"]["total_s"]
    # From an engine already started (a worker pool's), lacking the trunk: the parent's own
    # prefill + first token against restore (weights and KV) + first token.
    r["ratio_started_prefill_over_thaw_started_engine"] = (
        r["parent"]["prefill_ttft_s"] / r["thaw"]["started_engine_to_first_token_s"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs (recorded in the receipt)")
    args = ap.parse_args()
    trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    snap = "/tmp/trunk8b.thaw"
    r: dict = {"model": "8B-shaped Llama, bf16, random weights", "trunk_tokens": args.trunk}
    r["build_model_s"] = build_model(args.model)
    r["pinned_h2d_gb_s"] = pinned_memcpy_gb_s()
    engine = {**ENGINE, "enforce_eager": True, "compilation_config": None} if args.eager else ENGINE
    cfg = {k: v for k, v in {**engine, "model": args.model}.items() if v is not None}
    r["engine"] = cfg

    def parent():
        with EngineWorker(driver_spec("vllm"), {**cfg, "enable_sleep_mode": True}) as w:
            out = {"boot_s": w.call("info")["boot_seconds"]}
            cold = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            cached = w.call("generate", prompt_token_ids=trunk, max_tokens=16)
            out.update(prefill_ttft_s=cold["seconds"], cached_cached_tokens=cached["cached_tokens"],
                       cached_tokens_out=cached["tokens"])
            first = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            out["warm_cached_ttft_s"] = first["seconds"]
            out["snapshot"] = w.call("snapshot", path=snap)  # weights as vLLM parameters
            out["snapshot_bytes"] = os.path.getsize(snap)
            out["digest"] = w.call("info")["identity"]["weights_digest"]
            for level in (1, 2):
                slept = w.call("sleep", level=level)
                woke = w.call("wake_up", reload_weights=(level == 2))
                again = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
                out[f"sleep{level}"] = {"sleep_s": slept, "wake_s": woke, "ttft_s": again["seconds"],
                                        "cached_tokens": again["cached_tokens"],
                                        "wake_plus_ttft_s": woke + again["seconds"]}
            return out

    def cold():
        out, info = cold_start("vllm", cfg, trunk)
        return {**out, "vllm_import_s": info["import_seconds"]}

    def thaw_restore():
        t0 = time.perf_counter()
        with EngineWorker(driver_spec("vllm"), {**cfg, "load_format": "dummy"}) as w:
            booted = time.perf_counter() - t0
            prepare = w.call("prepare", path=snap)  # open the file, map it, register it with CUDA
            rep = w.call("restore", path=snap)
            first = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            out16 = w.call("generate", prompt_token_ids=trunk, max_tokens=16)
            info = w.call("info")
            phases = rep["seconds_by_phase"]
            weights_s = phases["weights_stage"] + phases["weights"]  # weights: stage + check + commit
            served = prepare + rep["seconds"] + first["seconds"]
            return {"process_start_to_ready_s": booted, "engine_boot_s": info["boot_seconds"],
                    "vllm_import_s": info["import_seconds"], "prepare_s": prepare,
                    "restore": rep, "weights_s": weights_s,
                    "weights_gb_s": rep["weights_bytes"] / weights_s / 1e9,
                    "ttft_s": first["seconds"], "cached_tokens": first["cached_tokens"],
                    "started_engine_to_first_token_s": served,
                    "total_s": booted + served, "tokens_out": out16["tokens"],
                    "digest_equals_parent": info["identity"]["weights_digest"] == r["parent"].get("digest")}

    def fork_rounds(kv_on_device: bool):
        with EngineWorker(driver_spec("vllm"), {**cfg, "load_format": "dummy"}) as w:
            prepare = w.call("prepare", path=snap, kv_on_device=kv_on_device)
            w.call("restore", path=snap)  # weights once; each round restores the trunk's KV
            rounds = []
            for _ in range(args.rounds):
                rep, measured = fork_round(w, snap, trunk)
                by_phase = rep["seconds_by_phase"]
                rounds.append({**measured, "kv_s": by_phase.get("kv_stage", 0.0) + by_phase.get("kv", 0.0)})
            return {"prepare_s": prepare, "rounds": rounds, **medians(rounds, "restore_s", "decode_s", "round_s")}

    for name, fn in (("parent", parent), ("cold", cold), ("thaw", thaw_restore),
                     ("fork", lambda: fork_rounds(False)), ("fork_kv_on_device", lambda: fork_rounds(True))):
        phase(r, name, fn)
    try:
        first_token_ratios(r)  # thaw's side includes prepare here
        r["ratio_weights_vs_pinned_memcpy"] = r["thaw"]["weights_gb_s"] / r["pinned_h2d_gb_s"]
        r["ratio_weights_with_prepare_vs_pinned_memcpy"] = (
            r["thaw"]["restore"]["weights_bytes"] / (r["thaw"]["weights_s"] + r["thaw"]["prepare_s"]) / 1e9
            / r["pinned_h2d_gb_s"])
        # vLLM's wake + re-prefill against thaw's prepare + restore + first token.
        r["ratio_sleep1_wake_ttft_over_thaw_prepare_restore_ttft"] = (
            r["parent"]["sleep1"]["wake_plus_ttft_s"] / r["thaw"]["started_engine_to_first_token_s"])
    except (KeyError, TypeError) as exc:
        r["ratios_error"] = f"a phase failed: {exc!r}"
    print(f"receipt: {write_receipt('gpu_e2e_vllm', r)}")


if __name__ == "__main__":
    main()
