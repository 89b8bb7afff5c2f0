"""A snapshot's write phase into fresh page cache against one into a retired snapshot's
file (`write_container(recycle=...)`), with plain writes of the same bytes as baselines.

One host buffer (default 2 GiB of random bytes, 8 sections), each repetition:
  plain fresh      os.write in 64 MiB blocks into a new file, one thread, no checksum;
  plain overwrite  os.pwrite of the same blocks over a file of that size still in the page
                   cache, one thread, no checksum (the ceiling of a recycled write);
  thaw fresh       `write_container` into a new file (CRC32C of every chunk, header);
  thaw recycled    `write_container(recycle=)` into the snapshot written just before it,
                   as a fork loop replaces its last round's snapshot (its pages cached:
                   mapped, and the sections copied in on the writer's threads);
  thaw recycled, write calls  the same with the mapping turned off (the route a retired
                   file takes when it is not cached), to show what the mapping adds.
Every file is fsync'd after its timed write, so no write is timed while an earlier one is
still being flushed in the background.
Reported: medians of `--reps`, GB/s of the write phase (into the page cache, before the
fsync), the flush (fsync + rename) shown apart, and ratios of like to like.
Usage: python benchmarks/recycled_write.py [--gib 2] [--reps 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from thaw.core import container, file_sinks
from thaw.core import format as fmt
from thaw.core.container import write_container

from receipt import write_receipt

SECTIONS = 8
BLOCK = 64 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()
    per = int(args.gib * 2**30) // SECTIONS // fmt.DEFAULT_CHUNK * fmt.DEFAULT_CHUNK
    buf = np.random.default_rng(0).integers(0, 256, per * SECTIONS, dtype=np.uint8)
    payloads = [(f"kv/layer/{i}", buf[i * per:(i + 1) * per]) for i in range(SECTIONS)]
    nbytes, view = buf.nbytes, memoryview(buf)
    d = os.path.join(args.dir, "recycled-write-bench")
    os.makedirs(d, exist_ok=True)
    plain_path, snaps = os.path.join(d, "plain.bin"), [os.path.join(d, f"round{i}.thaw") for i in range(2)]

    def plain(fresh: bool) -> float:
        if fresh and os.path.exists(plain_path):
            os.unlink(plain_path)
        fd = os.open(plain_path, os.O_WRONLY | os.O_CREAT, 0o600)
        t0 = time.perf_counter()
        for start in range(0, nbytes, BLOCK):
            os.pwrite(fd, view[start:start + BLOCK], start)
        dt = time.perf_counter() - t0
        os.fsync(fd)
        os.close(fd)
        return dt

    mapped_sink = file_sinks.recycled_sink

    def unmapped_sink(*args):  # the same file sized and allocated, then written by write calls
        sink = mapped_sink(*args)
        if sink is not None:
            sink.close()

    def thaw(target: str, recycle: str | None, mapped: bool = True) -> tuple[float, float]:
        t: dict[str, float] = {}
        file_sinks.recycled_sink = mapped_sink if mapped else unmapped_sink
        try:
            write_container(target, {"round": target}, payloads, timings=t, recycle=recycle)
        finally:
            file_sinks.recycled_sink = mapped_sink
        return t["write"], t["flush"]

    r: dict = {"bytes": nbytes, "sections": SECTIONS, "dir": args.dir, "reps": args.reps, "runs": {}}
    runs = r["runs"]
    for name in ("plain_fresh", "plain_overwrite", "thaw_fresh", "thaw_recycled", "thaw_recycled_write_calls"):
        runs[name] = {"write_s": [], "flush_s": []}
    for _ in range(args.reps):
        runs["plain_fresh"]["write_s"].append(plain(True))
        runs["plain_overwrite"]["write_s"].append(plain(False))  # over the file the line above left cached
        for name, target, recycle, mapped in (("thaw_fresh", snaps[0], None, True),
                                              ("thaw_recycled", snaps[1], snaps[0], True),
                                              ("thaw_recycled_write_calls", snaps[0], snaps[1], False)):
            w, f = thaw(target, recycle, mapped)  # fresh: a new temporary file; recycled: the last file, renamed
            runs[name]["write_s"].append(w)
            runs[name]["flush_s"].append(f)
    gbs = {name: nbytes / statistics.median(v["write_s"]) / 1e9 for name, v in runs.items()}
    r["write_gb_s"] = gbs
    r["flush_s_median"] = {n: statistics.median(v["flush_s"]) for n, v in runs.items() if v["flush_s"]}
    r["ratios"] = {"thaw_recycled_vs_thaw_fresh": gbs["thaw_recycled"] / gbs["thaw_fresh"],
                   "thaw_recycled_vs_plain_fresh": gbs["thaw_recycled"] / gbs["plain_fresh"],
                   "thaw_recycled_vs_plain_overwrite": gbs["thaw_recycled"] / gbs["plain_overwrite"],
                   "thaw_recycled_mapped_vs_write_calls": gbs["thaw_recycled"] / gbs["thaw_recycled_write_calls"],
                   "thaw_fresh_vs_plain_fresh": gbs["thaw_fresh"] / gbs["plain_fresh"]}
    r["includes"] = ("write phase: into the page cache, before the fsync (thaw: CRC32C of every chunk, header and "
                     "preamble; recycled: the rename of the retired file, its sizing and, mapped, the mapping too); "
                     f"flush: fsync, rename and directory fsync, shown apart; plain: one thread, no checksum, fsync'd "
                     f"after the timed write; thaw's writer threads: {container.DEFAULT_THREADS}")
    for name, v in gbs.items():
        print(f"{name}: {v:.2f} GB/s", flush=True)
    print(r["ratios"], r["flush_s_median"])
    for p in snaps + [plain_path]:
        if os.path.exists(p):
            os.unlink(p)
    print("receipt:", write_receipt("recycled_write", r))


if __name__ == "__main__":
    main()
