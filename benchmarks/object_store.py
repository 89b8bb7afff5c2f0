"""Snapshot reads from an S3-compatible server on localhost (moto's standalone server, its
own process) against the same client reading the raw object, in one run.

One snapshot of --mib MiB of KV pages is uploaded once. Then, each --reps times:
  - thaw: open the object (one ranged GET for the header) and read every section with
    every chunk's CRC32C checked (`ObjectContainer.verify`: parallel ranged GETs);
  - raw, parallel: the same bytes with the same client, the same part size and the same
    number of GETs in flight, no checks;
  - raw, one GET: `cat_file` of the whole object.
Reported: medians in GB/s, and thaw over each raw read. Both sides include the transfer
from the server process over loopback TCP; moto keeps objects in Python memory, so the
absolute numbers are the server's, and the ratio is the point.
Usage: python benchmarks/object_store.py [--mib 512] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

import thaw
from thaw.core import PrefixTree, StateSnapshot
from thaw.core.layouts import named_layout
from thaw.core.object_store import GET_THREADS, PART_BYTES, ObjectContainer, filesystem
from thaw.testing.s3_server import S3Server

from receipt import write_receipt


def build(mib: int) -> StateSnapshot:
    layout = named_layout("thaw.nhd", 16, 8, 64, "float32")
    pages = mib * 2**20 // (layout.page_elems * 4 * 4)
    layers = [torch.randn(pages, layout.page_elems) for _ in range(4)]
    tree = PrefixTree(16)
    tree.add_path([4 + i % 500 for i in range(16 * pages)], list(range(pages)))
    return StateSnapshot.from_kv(layout, layers, tree, thaw.Identity(model_architecture="Bench", num_layers=4))


def raw_parallel(url: str, size: int) -> None:
    fs, key = filesystem(url)
    parts = [(s, min(PART_BYTES, size - s)) for s in range(0, size, PART_BYTES)]
    with ThreadPoolExecutor(max_workers=min(GET_THREADS, len(parts))) as pool:
        list(pool.map(lambda p: fs.cat_file(key, start=p[0], end=p[0] + p[1]), parts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    server = S3Server().wait()
    os.environ.update(server.env)
    try:
        url = server.make_bucket("bench") + "/trunk.thaw"
        with tempfile.TemporaryDirectory() as work:
            thaw.save(build(args.mib), os.path.join(work, "trunk.thaw"))
            size = os.path.getsize(os.path.join(work, "trunk.thaw"))
            t0 = time.perf_counter()
            thaw.save(thaw.load(os.path.join(work, "trunk.thaw")), url)
            upload_s = time.perf_counter() - t0
        fs, key = filesystem(url)
        times = {"thaw_checked": [], "raw_parallel": [], "raw_one_get": []}
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ObjectContainer(url).verify()
            times["thaw_checked"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            raw_parallel(url, size)
            times["raw_parallel"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fs.cat_file(key)
            times["raw_one_get"].append(time.perf_counter() - t0)
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    gbps = {k: size / v / 1e9 for k, v in med.items()}
    import s3fs

    results = {"object_bytes": size, "reps": args.reps, "part_bytes": PART_BYTES, "gets_in_flight": GET_THREADS,
               "client": f"s3fs {s3fs.__version__}", "server": "moto standalone server (own process, loopback)",
               "median_seconds": med, "gb_per_s": gbps, "upload_seconds_with_local_write": upload_s,
               "ratios": {"thaw_vs_raw_parallel": med["raw_parallel"] / med["thaw_checked"],
                          "thaw_vs_raw_one_get": med["raw_one_get"] / med["thaw_checked"]},
               "includes": "thaw: header GET, every section fetched and every chunk CRC-checked; raw: bytes only"}
    print(results)
    print("receipt:", write_receipt("object_store", results))


if __name__ == "__main__":
    main()
