"""A restore from a snapshot that is not in the page cache, against a fair raw read of the disk.

One run, one card, the 8B-shaped bf16 Llama of `gpu_e2e_vllm` (random weights). The snapshot
(weights as vLLM parameters + the 4k trunk's KV) is `--snapshot`, written by a parent engine
first where it does not exist. Measured, with the file dropped from the page cache before
each (`thaw.core.residency.evict`: fsync + POSIX_FADV_DONTNEED, no privileges needed):
  raw    the whole file read with O_DIRECT by N threads at once (each its own 8 MiB pread
         at a time, into its own aligned buffer; nothing checked, nothing copied anywhere),
         for N in `--threads`: the best N is the baseline
  thaw   a fresh dummy-weight engine restores the file (no `prepare`: the restore finds the
         file cold and streams its weights with O_DIRECT, CRC-checked as read, to the GPU);
         reported by phase, with the route taken, and the restored weights digest against
         the snapshot's
Ratio: thaw's weights rate (their bytes over the read-and-verify phase, which holds the disk
read, the checks and the copies to the GPU) over the best raw rate.
Usage: python benchmarks/gpu_cold_restore.py [--snapshot /tmp/vs-anchor/thaw-full.thaw]
"""

from __future__ import annotations

import argparse
import mmap
import os
import threading
import time

from thaw.core import load
from thaw.core.residency import evict, resident_fraction
from thaw.core.registry import driver_spec
from thaw.workers import EngineWorker

from gpu_e2e_vllm import ENGINE, build_model, phase
from receipt import write_receipt

BLOCK = 8 << 20


def raw_direct_read(path: str, threads: int) -> dict:
    """Reads all of `path` with O_DIRECT, `threads` preads in flight; returns GB/s."""
    left = evict(path)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    offsets = iter(range(0, size, BLOCK))
    lock = threading.Lock()
    read = [0] * threads

    def worker(i: int) -> None:
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        while True:
            with lock:
                off = next(offsets, None)
            if off is None:
                return
            read[i] += os.preadv(fd, [buf], off)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    os.close(fd)
    if sum(read) < size - BLOCK:
        raise OSError(f"read {sum(read)} of {size} bytes")
    return {"threads": threads, "seconds": seconds, "gb_s": sum(read) / seconds / 1e9, "resident_before": left}


def parent_snapshot(engine: dict, path: str, trunk: list[int]) -> dict:
    with EngineWorker(driver_spec("vllm"), engine) as w:
        w.call("generate", prompt_token_ids=trunk, max_tokens=1)
        return w.call("snapshot", path=path)


def cold_restore(engine: dict, path: str) -> dict:
    with EngineWorker(driver_spec("vllm"), {**engine, "load_format": "dummy"}) as w:
        left = evict(path)
        rep = w.call("restore", path=path)
        digest = w.call("info")["identity"]["weights_digest"]
    phases = rep["seconds_by_phase"]
    return {"resident_before": left, "restore": rep, "route": rep.get("weights_route"), "kv_from": rep.get("kv_from"),
            "weights_gb_s": rep["weights_bytes"] / phases["weights_stage"] / 1e9,
            "digest_equals_snapshot": digest == load(path, verify=False).identity.weights_digest}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--snapshot", default="/tmp/vs-anchor/thaw-full.thaw")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--threads", default="1,8,32,64")
    args = ap.parse_args()
    trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    engine = {k: v for k, v in {**ENGINE, "model": args.model}.items() if v is not None}
    r: dict = {"model": "8B-shaped Llama, bf16, random weights", "snapshot": args.snapshot, "engine": engine,
               "build_model_s": build_model(args.model)}
    if not os.path.exists(args.snapshot):
        os.makedirs(os.path.dirname(args.snapshot), exist_ok=True)
        phase(r, "parent_snapshot", lambda: parent_snapshot(engine, args.snapshot, trunk))
    r["bytes"] = os.path.getsize(args.snapshot)
    r["resident_at_start"] = resident_fraction(args.snapshot)
    r["raw"] = []
    for n in (int(x) for x in args.threads.split(",")):
        phase(r, "_raw", lambda: raw_direct_read(args.snapshot, n))
        r["raw"].append(r.pop("_raw"))
    phase(r, "thaw", lambda: cold_restore(engine, args.snapshot))
    try:
        best = max((x for x in r["raw"] if "gb_s" in x), key=lambda x: x["gb_s"])
        r["raw_best"] = best
        r["ratio_thaw_weights_vs_best_raw_direct_read"] = r["thaw"]["weights_gb_s"] / best["gb_s"]
    except (KeyError, TypeError, ValueError) as exc:
        r["ratios_error"] = f"a phase failed: {exc!r}"
    r["includes"] = ("raw: O_DIRECT reads of the whole file, nothing checked or copied; thaw: the weights' "
                     "bytes over the restore's weights_stage phase (disk read with O_DIRECT, CRC32C of every "
                     "chunk, copies into a GPU staging buffer); the KV pages (kv_stage) and the commit into the "
                     "parameters are shown apart in the restore's phases")
    print(f"receipt: {write_receipt('gpu_cold_restore', r)}")


if __name__ == "__main__":
    main()
