"""Where a snapshot's write phase goes: thaw's checksummed section writer against a plain
write of the same bytes into the page cache of one file, and checksums alone, by thread count.

One host buffer (default 4 GiB of random bytes), written into a fresh file in `--dir` each
time (no fsync: the page cache only; the file is removed after each write):
  plain       os.write in 64 MiB blocks, one thread, no checksum (the baseline);
  thaw write  `write_section` (pwrite + CRC32C of every 4 MiB chunk) on 1..N threads;
  crc only    `crc32c_chunks` over the same buffer on 1..N threads (no write);
  mapped      the file sized first, mapped shared, and filled by 1..N threads, each backing
              its stripe's pages (MADV_POPULATE_WRITE) and copying into them (no checksum):
              a write path that a single file's write lock does not serialize.
Reported: medians of `--reps`, GB/s, and each thaw write as a ratio to the plain write.
Usage: python benchmarks/write_section.py [--gib 4] [--reps 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from thaw.core import format as fmt
from thaw.core.movers import movers
from thaw.core.prefault import populate_range

from receipt import write_receipt


def timed(fn, reps: int) -> float:
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()
    nbytes = int(args.gib * 2**30) // fmt.DEFAULT_CHUNK * fmt.DEFAULT_CHUNK
    buf = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    view = memoryview(buf)
    path = os.path.join(args.dir, "write-section-bench.bin")
    mv = movers()

    def plain() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for start in range(0, nbytes, 64 << 20):
            os.write(fd, view[start: start + (64 << 20)])
        os.close(fd)
        os.unlink(path)

    def thaw_write(threads: int):
        def run() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            mv.write_section(fd, 0, view, nbytes, fmt.DEFAULT_CHUNK, threads)
            os.close(fd)
            os.unlink(path)
        return run

    src = buf.ctypes.data

    def mapped_write(threads: int):
        def run() -> None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, nbytes)
            m = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            dst = ctypes.addressof(ctypes.c_char.from_buffer(m))
            stripe = -(-nbytes // threads) // mmap.PAGESIZE * mmap.PAGESIZE or mmap.PAGESIZE

            def fill(start: int) -> None:
                n = min(stripe, nbytes - start)
                populated = populate_range(dst + start, n)
                if populated != "populated":
                    raise OSError(populated)
                ctypes.memmove(dst + start, src + start, n)

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fill, range(0, nbytes, stripe)))
            m.close()
            os.close(fd)
            os.unlink(path)
        return run

    threads = sorted({1, 2, 4, 8, 16, os.cpu_count() or 1})
    plain_s = timed(plain, args.reps)
    r = {"bytes": nbytes, "chunk": fmt.DEFAULT_CHUNK, "dir": args.dir, "reps": args.reps,
         "plain_write_gb_s": nbytes / plain_s / 1e9, "thaw_write_gb_s": {}, "crc_only_gb_s": {},
         "thaw_write_vs_plain": {}, "mapped_write_gb_s": {}}
    for n in threads:
        w = timed(thaw_write(n), args.reps)
        c = timed(lambda: mv.crc32c_chunks(view, fmt.DEFAULT_CHUNK, n), args.reps)
        r["thaw_write_gb_s"][n] = nbytes / w / 1e9
        r["crc_only_gb_s"][n] = nbytes / c / 1e9
        r["thaw_write_vs_plain"][n] = plain_s / w
        m = timed(mapped_write(n), args.reps)
        r["mapped_write_gb_s"][n] = nbytes / m / 1e9
        print(f"threads {n}: write {nbytes / w / 1e9:.2f} GB/s, crc {nbytes / c / 1e9:.2f} GB/s, "
              f"mapped {nbytes / m / 1e9:.2f} GB/s", flush=True)
    r["includes"] = ("page-cache writes only (no fsync), one file, the file created and removed each time; "
                     "plain: one thread of os.write in 64 MiB blocks, no checksum; mapped: sizing, mapping, populating "
                     "and copying counted, no checksum")
    print(r)
    print("receipt:", write_receipt("write_section", r))


if __name__ == "__main__":
    main()
