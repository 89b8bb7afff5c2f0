"""End to end on a GPU with real SGLang: a fresh engine serving a 4k-token trunk.

One run, one card, the 8B-shaped bf16 Llama of gpu_e2e_vllm.py (random weights, built on the
device). SGLang's own Llama, Triton attention, page size 16, no CUDA graphs (eager decode).
Each engine in its own process, measured side by side:
  cold   fresh engine boot (checkpoint in page cache) + prefill of the trunk + first token
  thaw   fresh engine with dummy weights, warmed up on a short prompt (as the parent; counted
         in its total), restore of weights + KV + prefix from the snapshot (in page cache),
         then the trunk as a cache hit; the KV's GB/s against pinned
         memcpy measured on the same card in the same run
  fork   rounds of: flush the cache, restore the trunk's KV into the warm engine (KV
         uploaded from the registered file and checked on the GPU), then 4 branches x 64
         tokens; thaw's share of each round reported apart from decoding
  fork_kv_on_device  the same, the trunk's pages kept on the device by
         `prepare(kv_on_device=True)` (checked once, there), so a round moves no KV over the
         link; both fork phases in one warm engine
  kv_link  in this process, the KV snapshot's sections uploaded from pinned memory, from the
         registered file, checked, and written on (kv_link.py): where the `kv` phase's time goes
A phase that fails records its error in the receipt instead of a number.
Usage: python benchmarks/gpu_e2e_sglang.py [--trunk 4000] [--rounds 5]
       [--phases parent,kv_link,cold,thaw,fork,fork_kv_on_device]
"""

from __future__ import annotations

import argparse
import os
import time

from thaw.core.registry import driver_spec
from thaw.workers import EngineWorker

from gpu_e2e_vllm import (build_model, cold_start, first_token_ratios, fork_round, medians, phase, pinned_memcpy_gb_s,
                          warm_up)
from kv_link import kv_upload_rates
from receipt import write_receipt

ENGINE = {"device": "cuda", "attention_backend": "triton", "model_impl": "auto", "dtype": "bfloat16",
          "page_size": 16, "mem_fraction_static": 0.4, "max_total_tokens": 65536,
          "disable_cuda_graph": True, "context_length": 8192}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--phases", default="parent,kv_link,cold,thaw,fork,fork_kv_on_device",
                    help="which phases to run (parent writes the snapshots the others read)")
    args = ap.parse_args()
    trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    snap, kv_snap = "/tmp/trunk8b-sglang.thaw", "/tmp/trunk8b-sglang-kv.thaw"
    r: dict = {"model": "8B-shaped Llama, bf16, random weights", "trunk_tokens": args.trunk, "engine": ENGINE}
    r["build_model_s"] = build_model(args.model)
    r["pinned_h2d_gb_s"] = pinned_memcpy_gb_s()
    r["pinned_d2h_gb_s"] = pinned_memcpy_gb_s(to_host=True)
    cfg = {**ENGINE, "model": args.model}

    def parent():
        with EngineWorker(driver_spec("sglang"), cfg) as w:
            out = {"boot_s": w.call("info")["boot_seconds"]}
            warm_up(w, trunk)  # the trunk's prefill below then times the prefill alone, as the cold one's
            cold = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            cached = w.call("generate", prompt_token_ids=trunk, max_tokens=16)
            out.update(prefill_ttft_s=cold["seconds"], cached_cached_tokens=cached["cached_tokens"],
                       cached_tokens_out=cached["tokens"])
            out["warm_cached_ttft_s"] = w.call("generate", prompt_token_ids=trunk, max_tokens=1)["seconds"]
            out["snapshot"] = w.call("snapshot", path=snap)
            out["snapshot_bytes"] = os.path.getsize(snap)
            out["kv_snapshot"] = w.call("snapshot", path=kv_snap, weights=False)
            out["kv_snapshot_bytes"] = os.path.getsize(kv_snap)
            out["digest"] = w.call("info")["identity"]["weights_digest"]
            return out

    def cold():
        return cold_start("sglang", cfg, trunk)[0]

    def thaw_restore():
        t0 = time.perf_counter()
        with EngineWorker(driver_spec("sglang"), {**cfg, "load_format": "dummy"}) as w:
            booted = time.perf_counter() - t0
            # As the parent (a pool's started engine has served before); counted in the new
            # process's total.
            warmup = warm_up(w, trunk)
            rep = w.call("restore", path=snap)
            first = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            out16 = w.call("generate", prompt_token_ids=trunk, max_tokens=16)
            served = rep["seconds"] + first["seconds"]
            by_phase = rep["seconds_by_phase"]
            weights_s = by_phase.get("weights_stage", 0.0) + by_phase["weights"]
            return {"process_start_to_ready_s": booted, "engine_boot_s": w.call("info")["boot_seconds"],
                    "restore": rep, "ttft_s": first["seconds"], "cached_tokens": first["cached_tokens"],
                    "warmup_s": warmup, "started_engine_to_first_token_s": served,
                    "total_s": booted + warmup + served,
                    "tokens_out": out16["tokens"], "weights_route": rep["weights_route"],
                    # staged (copied and checked on the GPU) + loaded by SGLang's load_weights; the
                    # file's CUDA registration, done first by the KV upload, is in the kv phase
                    "weights_s": weights_s, "weights_gb_s": rep["weights_bytes"] / weights_s / 1e9,
                    "digest_equals_parent": w.call("info")["identity"]["weights_digest"] == r["parent"].get("digest")}

    def rounds_from(w: EngineWorker, kv_on_device: bool) -> dict:
        prepare = w.call("prepare", path=kv_snap, kv_on_device=kv_on_device)
        rounds = []
        for _ in range(args.rounds):
            rep, measured = fork_round(w, kv_snap, trunk)
            by_phase = rep["seconds_by_phase"]
            # kv: every layer uploaded, checked on the GPU and written into the slots that
            # kv_allocate (planning on the host, allocation) set aside, listed apart
            rounds.append({**measured, "kv_gb_s": rep["kv_bytes"] / by_phase["kv"] / 1e9})
        return {"prepare_s": prepare, "rounds": rounds, "kv_bytes": rep["kv_bytes"],
                **medians(rounds, "restore_s", "kv_gb_s", "decode_s", "round_s")}

    def fork_phases() -> None:
        """Both fork phases in one warm engine, the file's first (preparing with
        kv_on_device=False keeps no pages), then with the pages kept on the device."""
        wanted = [(n, on_dev) for n, on_dev in (("fork", False), ("fork_kv_on_device", True)) if n in phases]
        if not wanted:
            return
        try:
            with EngineWorker(driver_spec("sglang"), cfg) as w:
                for name, kv_on_device in wanted:
                    phase(r, name, lambda: rounds_from(w, kv_on_device))
        except Exception as exc:  # the engine did not start or stop: each phase records it
            for name, _ in wanted:
                r.setdefault(name, {"error": f"{type(exc).__name__}: {exc}"[:2000]})

    phases = args.phases.split(",")
    for name, fn in (("parent", parent), ("kv_link", lambda: kv_upload_rates(kv_snap)), ("cold", cold),
                     ("thaw", thaw_restore)):
        if name in phases:
            phase(r, name, fn)
    fork_phases()
    ratios = {  # each from the phases it needs, so a phase not run leaves the others
        "first_token": lambda: first_token_ratios(r),
        # KV restore (upload + GPU check + scatter) against a plain pinned host->GPU copy.
        "ratio_kv_restore_vs_pinned_memcpy": lambda: r["fork"]["median_kv_gb_s"] / r["pinned_h2d_gb_s"],
        # the same against a pinned copy of the KV's own bytes (kv_link's, same size)
        "ratio_kv_restore_vs_pinned_memcpy_same_bytes": lambda: r["fork"]["median_kv_gb_s"] / r["kv_link"]["pinned_gb_s"],
        "ratio_weights_restore_vs_pinned_memcpy": lambda: r["thaw"]["weights_gb_s"] / r["pinned_h2d_gb_s"],
    }
    for name, ratio in ratios.items():
        try:
            value = ratio()
        except (KeyError, TypeError) as exc:
            r.setdefault("ratios_error", {})[name] = f"a phase failed or was not run: {exc!r}"
            continue
        if value is not None:
            r[name] = value
    print(f"receipt: {write_receipt('gpu_e2e_sglang', r)}")


if __name__ == "__main__":
    main()
