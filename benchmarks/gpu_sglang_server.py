"""A restored fresh SGLang server against a cold one: request to first token on a trunk.

Three `python -m sglang.launch_server` processes, one after the other on the same card
(each alone on it), serving the 8B-shaped bf16 Llama of the other GPU benchmarks with the
settings of `gpu_fork_engines.py` (Triton attention, pages of 16, CUDA graphs and the
overlap scheduler on, as SGLang serves on a GPU; its decode attention split 16 ways since
c6eadc7, SGLang's default 8 before; the receipt records the settings), driven over HTTP by a real client:
  parent  started on the checkpoint; a short unrelated prompt (kernels compiled and cached
          on disk for the two servers after it), the cache flushed; the trunk's prefill and
          first token timed (`prefill_ttft_s`); the trunk again (its own cache hit, greedy
          output: the reference); `POST /thaw/snapshot` of the trunk (weights and KV)
  cold    a new server on the checkpoint: process start to `/health` answering
          (`start_to_ready_s`: import, weights from the page cache, KV pool, graphs), then
          the trunk's prefill and first token (`ttft_s`)
  thaw    a new server with dummy weights: start to ready, `POST /thaw/restore` of the
          trunk's snapshot (weights and KV; `restore_s`, with the phases the server reports),
          then the trunk's first token as a cache hit (`ttft_s`, `cached_tokens`)
Ratios: cold's start + first token over thaw's start + restore + first token (a new
server, both sides); and from a started server lacking the trunk, the parent's own prefill
+ first token over thaw's restore + first token. The thaw server's greedy output on the
trunk is compared with the parent's. Every phase's seconds are in the receipt.
Usage: python benchmarks/gpu_sglang_server.py [--trunk 4000] [--out-logs DIR]
(run with SGLang on the path, e.g. through scripts/gpu/with_sglang.sh).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from thaw.testing.sglang_server import SGLangServer

from gpu_e2e_vllm import build_model, phase
from gpu_fork_engines import GPU_CONFIGS
from receipt import write_receipt

KEY = "bench-key"


def timed_generate(server: SGLangServer, tokens: list[int], max_new_tokens: int = 1) -> dict:
    t0 = time.perf_counter()
    out, cached = server.generate(tokens, max_new_tokens)
    return {"seconds": time.perf_counter() - t0, "cached_tokens": cached, "tokens": out}


def started(model: str, snaps: str, log: str, **settings) -> tuple[SGLangServer, dict]:
    """A server process started and answering; with its seconds from start to ready and the
    card's free GiB when it started (each server is meant to be alone on the card)."""
    import torch

    out = {"gpu_free_gib_at_start": round(torch.cuda.mem_get_info()[0] / 2**30, 1)}
    t0 = time.perf_counter()
    server = SGLangServer(model, snaps, log, api_key=KEY, **settings)
    try:
        server.wait(600)
    except BaseException:
        server.stop()
        raise
    out["start_to_ready_s"] = time.perf_counter() - t0
    return server, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--out-logs", default=tempfile.mkdtemp(prefix="thaw-sglang-server-logs-"))
    args = ap.parse_args()
    trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    snaps = tempfile.mkdtemp(prefix="thaw-sglang-server-")
    snap = os.path.join(snaps, "trunk.thaw")
    settings = {k: v for k, v in GPU_CONFIGS["sglang"].items() if k != "model"}
    r: dict = {"model": "8B-shaped Llama, bf16, random weights", "trunk_tokens": args.trunk,
               "server_settings": settings}
    r["build_model_s"] = build_model(args.model)

    def parent():
        server, out = started(args.model, snaps, os.path.join(args.out_logs, "parent.log"), **settings)
        try:
            t0 = time.perf_counter()
            server.generate(trunk[:64][::-1], 2)
            server.flush_cache()
            out["warm_up_s"] = time.perf_counter() - t0
            out["prefill"] = timed_generate(server, trunk)
            out["reference"] = timed_generate(server, trunk, 16)
            t0 = time.perf_counter()
            out["snapshot_reply"] = server.request("/thaw/snapshot", {"path": snap})
            out["snapshot_s"] = time.perf_counter() - t0
            out["snapshot_bytes"] = os.path.getsize(snap)
            return out
        finally:
            server.stop()

    def cold():
        server, out = started(args.model, snaps, os.path.join(args.out_logs, "cold.log"), **settings)
        try:
            first = timed_generate(server, trunk)
            return {**out, "ttft_s": first["seconds"], "cached_tokens": first["cached_tokens"],
                    "total_s": out["start_to_ready_s"] + first["seconds"]}
        finally:
            server.stop()

    def thaw_restore():
        server, out = started(args.model, snaps, os.path.join(args.out_logs, "thaw.log"), load_format="dummy",
                              **settings)
        try:
            t0 = time.perf_counter()
            reply = server.request("/thaw/restore", {"path": snap})
            restore_s = time.perf_counter() - t0
            first = timed_generate(server, trunk)
            again = timed_generate(server, trunk, 16)
            return {**out, "restore_s": restore_s, "restore_reply": reply,
                    "ttft_s": first["seconds"], "cached_tokens": first["cached_tokens"],
                    "tokens_out": again["tokens"], "total_s": out["start_to_ready_s"] + restore_s + first["seconds"],
                    "started_server_to_first_token_s": restore_s + first["seconds"]}
        finally:
            server.stop()

    try:
        for name, fn in (("parent", parent), ("cold", cold), ("thaw", thaw_restore)):
            phase(r, name, fn)
    finally:
        if os.path.exists(snap):
            os.remove(snap)
    try:
        r["thaw_output_equals_parent"] = r["thaw"]["tokens_out"] == r["parent"]["reference"]["tokens"]
        r["ratio_cold_over_thaw_new_server"] = r["cold"]["total_s"] / r["thaw"]["total_s"]
        r["ratio_started_prefill_over_thaw_started_server"] = (
            r["parent"]["prefill"]["seconds"] / r["thaw"]["started_server_to_first_token_s"])
    except (KeyError, TypeError) as exc:  # a phase failed: its error is in the receipt
        r["ratios_error"] = f"a phase failed: {exc!r}"
    r["server_logs"] = args.out_logs
    print({k: v for k, v in r.items() if k.startswith("ratio") or k.endswith("parent")})
    print(f"receipt: {write_receipt('gpu_sglang_server', r)}")


if __name__ == "__main__":
    main()
