"""How long the command line takes to answer, against the interpreter's own start and an
import of torch, in one run (median of several runs of each, wall clock, new process each).

`thaw --help` should answer in under 0.3 s; `inspect` and `verify` of a small snapshot
should not pay for importing torch.
Usage: python benchmarks/cli_startup.py [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import thaw

from receipt import write_receipt


def median_run(argv: list[str], reps: int) -> float:
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first run warms the page cache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    thaw_cli = [sys.executable, "-m", "thaw.cli"]
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "s.thaw")
        thaw.save(thaw.StateSnapshot.from_tensors({"w": torch.randn(1024, 1024)}), path)
        results = {
            "python -c pass": median_run([sys.executable, "-c", "pass"], args.reps),
            "python -c 'import torch'": median_run([sys.executable, "-c", "import torch"], args.reps),
            "thaw --help": median_run([*thaw_cli, "--help"], args.reps),
            "thaw --version": median_run([*thaw_cli, "--version"], args.reps),
            "thaw inspect (4 MiB snapshot)": median_run([*thaw_cli, "inspect", path], args.reps),
            "thaw verify (4 MiB snapshot)": median_run([*thaw_cli, "verify", path], args.reps),
        }
    out = {"seconds_median": {k: round(v, 3) for k, v in results.items()},
           "reps": args.reps,
           "reading": "each is a new process from start to exit; the torch import is shown for scale"}
    for k, v in out["seconds_median"].items():
        print(f"{k:32s} {v:.3f} s")
    print("receipt:", write_receipt("cli_startup", out))


if __name__ == "__main__":
    main()
