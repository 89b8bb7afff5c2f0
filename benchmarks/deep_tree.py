"""`thaw diff` and `thaw convert` work on prefix trees that are deep, not only wide.

A comb of depth N (a trunk of N one-page nodes, each with a one-page side leaf) is the
worst case for any step that walks from every leaf to the root. Both steps are timed at
depths N and 4N in one run, in one process (load from the page cache counted, torch
import not): a linear step's time grows about 4x, a quadratic one's about 16x.
Usage: python benchmarks/deep_tree.py [--depth 15000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import thaw
from thaw.core.layouts import named_layout
from thaw.core.recut import recut
from thaw.core.summary import diff_snapshots
from thaw.testing.trees import comb_snapshot

from receipt import write_receipt


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(depth: int, folder: Path) -> dict:
    path = folder / f"comb{depth}.thaw"
    thaw.save(comb_snapshot(depth, page=4), path)
    diff_s = timed(lambda: diff_snapshots(thaw.load(path, verify=False), thaw.load(path, verify=False)))
    layout = named_layout("thaw.nhd", 8, 1, 8, "float32")
    convert_s = timed(lambda: thaw.save(recut(thaw.load(path, verify=False), layout)[0], folder / "out.thaw"))
    return {"depth": depth, "nodes": 2 * depth, "file_bytes": path.stat().st_size,
            "diff_s": round(diff_s, 3), "convert_s": round(convert_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=15000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        small, large = measure(args.depth, Path(d)), measure(4 * args.depth, Path(d))
    growth = {k: round(large[k] / small[k], 2) for k in ("diff_s", "convert_s")}
    results = {"small": small, "large": large, "growth_at_4x_depth": growth,
               "reading": "about 4 means linear in depth, about 16 quadratic; each side includes "
                          "loading both files (diff) or loading, re-cutting and saving (convert)"}
    print(results)
    print("receipt:", write_receipt("deep_tree", results))


if __name__ == "__main__":
    main()
