"""Native read + CRC32C of a snapshot from the page cache, against plain reads of the same file.

Measured in one run on the same file, each the median of several repetitions:
  - `cat FILE > /dev/null` and Python `readinto` loops (no checksum): the baselines;
  - thaw's pipelined reader filling one caller buffer per section, CRC32C checked;
  - `thaw verify`'s streaming check of every byte.
Usage: python benchmarks/read_crc.py [--gib 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch

import thaw
from thaw.core.container import Container
from thaw.core.movers import DEFAULT_THREADS, movers

from receipt import write_receipt


def median_seconds(fn, reps: int) -> float:
    fn()  # warm: page cache resident, buffers touched
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    n_tensors = 16
    per = int(args.gib * 2**30 / n_tensors) // 4
    weights = {f"layer.{i}.weight": torch.randn(per) for i in range(n_tensors)}
    workdir = tempfile.mkdtemp(prefix="thaw-bench-", dir=os.environ.get("THAW_BENCH_DIR"))
    path = os.path.join(workdir, "bench.thaw")
    thaw.save(thaw.StateSnapshot.from_tensors(weights), path)
    size = os.path.getsize(path)
    del weights
    c = Container(path)
    dests = {name: np.empty(s.length, dtype=np.uint8) for name, s in c.sections.items()}

    def cat():
        subprocess.run(f"cat {path} > /dev/null", shell=True, check=True)

    def py_readinto():
        with open(path, "rb", buffering=0) as f:
            for name, s in c.sections.items():
                f.seek(s.offset)
                f.readinto(memoryview(dests[name]))

    def thaw_read():
        for name in c.sections:
            c.read_into(name, dests[name], verify=True)

    def thaw_verify():
        c.verify()

    r = {
        "file_bytes": size,
        "threads": DEFAULT_THREADS,
        "crc_backend": movers().crc_backend,
        "seconds": {},
    }
    for label, fn in [("cat_to_devnull", cat), ("python_readinto", py_readinto),
                      ("thaw_read_into_verified", thaw_read), ("thaw_verify_stream", thaw_verify)]:
        r["seconds"][label] = median_seconds(fn, args.reps)
    r["gb_per_s"] = {k: size / v / 1e9 for k, v in r["seconds"].items()}
    g = r["gb_per_s"]
    # Same work on each side: bytes land in caller memory (read) or are only looked at (stream).
    r["ratio_read_into_memory_thaw_verified_vs_python_readinto"] = g["thaw_read_into_verified"] / g["python_readinto"]
    r["ratio_stream_thaw_verify_vs_cat"] = g["thaw_verify_stream"] / g["cat_to_devnull"]
    for k, v in g.items():
        print(f"{k:28s} {v:6.2f} GB/s")
    print(f"into memory: thaw read+CRC32C vs Python readinto: {r['ratio_read_into_memory_thaw_verified_vs_python_readinto']:.2f}x")
    print(f"streaming:   thaw verify vs cat > /dev/null:      {r['ratio_stream_thaw_verify_vs_cat']:.2f}x")
    out = write_receipt("read_crc", r)
    print(f"receipt: {out}")
    os.remove(path)
    os.rmdir(workdir)


if __name__ == "__main__":
    main()
