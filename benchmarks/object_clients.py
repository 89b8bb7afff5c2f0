"""Which client thaw should read and write snapshot objects with: s3fs (fsspec) against
obstore, against the same S3-compatible server on localhost (moto's standalone server, its
own process), in one run.

One snapshot object of --mib MiB is uploaded once. Then, each --reps times, each client
in turn (the order alternates every repetition):
  - parallel: the whole object by ranged GETs of thaw's part size with thaw's number of
    GETs in flight (what `ObjectContainer` does), bytes only;
  - one GET: the whole object in one request;
  - upload: the local snapshot file put at a new key (s3fs: `put_file`, multipart;
    obstore: `put` of the file, multipart).
Reported: medians in GB/s and obstore over s3fs for each. Both sides include the transfer
from the server process over loopback TCP; moto keeps objects in Python memory and
answers in Python, so a ratio near 1 says the server, not the client, set the pace.
Usage: python benchmarks/object_clients.py [--mib 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import thaw
from thaw.core.object_store import GET_THREADS, PART_BYTES, filesystem, obstore_s3
from thaw.testing.s3_server import S3Server

from object_store import build
from receipt import write_receipt


def parts(size: int) -> list[tuple[int, int]]:
    return [(s, min(PART_BYTES, size - s)) for s in range(0, size, PART_BYTES)]


class S3fsClient:
    name = "s3fs"

    def __init__(self, bucket_url: str) -> None:
        self.fs, self.bucket = filesystem(bucket_url)

    def parallel(self, key: str, size: int) -> int:
        with ThreadPoolExecutor(max_workers=min(GET_THREADS, len(parts(size)))) as pool:
            return sum(pool.map(lambda p: len(self.fs.cat_file(f"{self.bucket}/{key}", start=p[0],
                                                               end=p[0] + p[1])), parts(size)))

    def one_get(self, key: str, size: int) -> int:
        return len(self.fs.cat_file(f"{self.bucket}/{key}"))

    def upload(self, local: str, key: str) -> None:
        self.fs.put_file(local, f"{self.bucket}/{key}")


class ObstoreClient:
    name = "obstore"

    def __init__(self, bucket_url: str) -> None:
        self.store = obstore_s3(bucket_url.split("://", 1)[1])  # thaw's own client, from the environment

    def parallel(self, key: str, size: int) -> int:
        import obstore

        with ThreadPoolExecutor(max_workers=min(GET_THREADS, len(parts(size)))) as pool:
            return sum(pool.map(lambda p: len(obstore.get_range(self.store, key, start=p[0], length=p[1])),
                                parts(size)))

    def one_get(self, key: str, size: int) -> int:
        import obstore

        return len(obstore.get(self.store, key).bytes())

    def upload(self, local: str, key: str) -> None:
        import obstore

        with open(local, "rb") as f:
            obstore.put(self.store, key, f)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import obstore
    import s3fs

    server = S3Server().wait()
    os.environ.update(server.env)
    try:
        bucket = server.make_bucket("bench")
        clients = [S3fsClient(bucket), ObstoreClient(bucket)]
        times: dict[str, dict[str, list[float]]] = {c.name: {"parallel": [], "one_get": [], "upload": []}
                                                    for c in clients}
        with tempfile.TemporaryDirectory() as work:
            local = os.path.join(work, "trunk.thaw")
            thaw.save(build(args.mib), local)
            size = os.path.getsize(local)
            clients[0].upload(local, "trunk.thaw")
            for rep in range(args.reps):
                for c in (clients if rep % 2 == 0 else clients[::-1]):
                    for step, fn in (("parallel", lambda: c.parallel("trunk.thaw", size)),
                                     ("one_get", lambda: c.one_get("trunk.thaw", size))):
                        got = []
                        times[c.name][step].append(timed(lambda: got.append(fn())))
                        if got[0] != size:
                            raise SystemExit(f"{c.name} {step}: {got[0]} bytes, expected {size}")
                    times[c.name]["upload"].append(timed(lambda: c.upload(local, f"up-{c.name}-{rep}.thaw")))
    finally:
        server.stop()
    med = {c: {k: statistics.median(v) for k, v in steps.items()} for c, steps in times.items()}
    results = {"object_bytes": size, "reps": args.reps, "part_bytes": PART_BYTES, "gets_in_flight": GET_THREADS,
               "clients": {"s3fs": s3fs.__version__, "obstore": obstore.__version__},
               "server": "moto standalone server (own process, loopback)",
               "median_seconds": med,
               "gb_per_s": {c: {k: size / v / 1e9 for k, v in steps.items()} for c, steps in med.items()},
               "ratios": {f"obstore_vs_s3fs_{k}": med["s3fs"][k] / med["obstore"][k] for k in med["s3fs"]},
               "includes": "bytes only (no checks) on both sides; the upload includes reading the local file"}
    print(results)
    print("receipt:", write_receipt("object_clients", results))


if __name__ == "__main__":
    main()
