"""Taking a snapshot on a GPU with real vLLM, phase by phase, against the machine's own rates.

One run, one card: the 8B-shaped bf16 Llama of `gpu_e2e_vllm` (random weights, built on the
device), one in-process engine, a 4k-token trunk prefilled. Then, each `--reps` times:
  full  weights as vLLM parameters + KV + prefix into a file on local disk, by phase:
        capture (KV pages gathered, parameters copied to host memory), write (CRC32C of every
        chunk and the write into the page cache), flush (fsync, rename, directory fsync);
  kv    the same without weights;
  session  KV + prefix with the weights referenced from the full snapshot (`weights_from`):
        what a session costs when its weights are already in a snapshot;
  kv_recycled, full_recycled  kv and full again, each written into the file of the one
        before (`recycle=`), as a loop that replaces its last snapshot.
Then two fresh dummy-weight engines restore the full snapshot and the session one (prepare
shown apart): weights GB/s by each route, which must be the same speed.
Baselines in the same run, for the same byte counts:
  d2h    the card's device -> pinned host copy of one buffer (torch, one copy);
  write  a plain write of a host buffer into a file in the same directory (no checksum),
         and its fsync, apart.
Reported: medians; snapshot GB/s into the page cache (capture + write, flush shown apart)
and with the flush; ratios to the baselines. The target is >= 5 GB/s into the page cache.
Usage: python benchmarks/gpu_snapshot.py [--trunk 4000] [--reps 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from thaw.core.registry import driver_spec
from thaw.workers import EngineWorker

from gpu_e2e_vllm import ENGINE, build_model, phase, pinned_memcpy_gb_s, prepared_restore
from receipt import write_receipt


def plain_write(path: str, nbytes: int, reps: int = 2) -> dict:
    """A host buffer written into `path` in 64 MiB writes (page cache), then fsync'd."""
    block = os.urandom(1 << 20) * 64
    writes, flushes = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        left = nbytes
        while left > 0:
            left -= os.write(fd, block[: min(left, len(block))])
        t1 = time.perf_counter()
        os.fsync(fd)
        os.close(fd)
        writes.append(t1 - t0)
        flushes.append(time.perf_counter() - t1)
        os.unlink(path)
    write_s, flush_s = statistics.median(writes), statistics.median(flushes)
    return {"bytes": nbytes, "write_s": write_s, "flush_s": flush_s, "write_gb_s": nbytes / write_s / 1e9,
            "write_and_flush_gb_s": nbytes / (write_s + flush_s) / 1e9}


def _snapshot_run(w: EngineWorker, path: str, weights: bool, **kwargs) -> dict:
    """One `snapshot` call of the engine in `w`: its seconds, phases and file size."""
    rep = w.call("snapshot", path=path, weights=weights, **kwargs)
    return {"seconds": rep["seconds"], "by_phase": rep.get("seconds_by_phase", {}), "bytes": os.path.getsize(path)}


def _summary(runs: list[dict]) -> dict:
    """Medians of `runs` (`_snapshot_run`'s): whole call, each phase, into the page cache
    (every phase but the flush), and the GB/s of both."""
    nbytes = runs[-1]["bytes"]
    phases = {k: statistics.median(r["by_phase"].get(k, 0.0) for r in runs) for k in runs[-1]["by_phase"]}
    into_cache = sum(v for k, v in phases.items() if k != "flush")
    median_s = statistics.median(r["seconds"] for r in runs)
    return {"runs": runs, "bytes": nbytes, "median_s": median_s, "phases_s": phases,
            "into_page_cache_s": into_cache, "gb_s_into_page_cache": nbytes / into_cache / 1e9,
            "gb_s_with_flush": nbytes / median_s / 1e9}


def snapshots(w: EngineWorker, path: str, reps: int, weights: bool, **kwargs) -> dict:
    return _summary([_snapshot_run(w, path, weights, **kwargs) for _ in range(reps)])


def recycled_snapshots(w: EngineWorker, retired: str, reps: int, weights: bool, **kwargs) -> dict:
    """`snapshots`, each one written into the file of the one before (`recycle=`), as a loop
    that replaces its last snapshot does: `reps` of them, the first into the snapshot file
    `retired`, then alternating between `retired` and `retired` + ".b". Leaves the last file."""
    names = [retired, retired + ".b"]
    runs = []
    for i in range(1, reps + 1):
        runs.append(_snapshot_run(w, names[i % 2], weights, recycle=names[(i - 1) % 2], **kwargs))
        if os.path.exists(names[(i - 1) % 2]):
            raise RuntimeError(f"the retired file {names[(i - 1) % 2]} is still there after a recycled snapshot")
    return {**_summary(runs), "last_path": names[reps % 2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp", help="where snapshots are written (local disk)")
    args = ap.parse_args()
    trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    full_path, kv_path = os.path.join(args.dir, "snap-full.thaw"), os.path.join(args.dir, "snap-kv.thaw")
    session_path = os.path.join(args.dir, "snap-session.thaw")
    r: dict = {"model": "8B-shaped Llama, bf16, random weights", "trunk_tokens": args.trunk, "reps": args.reps,
               "dir": args.dir, "build_model_s": build_model(args.model)}
    cfg = {k: v for k, v in {**ENGINE, "model": args.model}.items() if v is not None}
    r["engine"] = cfg

    def engine():
        with EngineWorker(driver_spec("vllm"), cfg) as w:
            w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            out = {"full": snapshots(w, full_path, args.reps, True), "kv": snapshots(w, kv_path, args.reps, False)}
            out["session"] = snapshots(w, session_path, args.reps, True, weights_from=full_path)
            out["kv_recycled"] = recycled_snapshots(w, kv_path, args.reps, False)
            os.unlink(out["kv_recycled"]["last_path"])
            os.unlink(session_path)  # it references full_path, which recycling replaces
            out["full_recycled"] = recycled_snapshots(w, full_path, args.reps, True)
            os.replace(out["full_recycled"]["last_path"], full_path)
            out["session"]["rewritten_for_restore"] = snapshots(w, session_path, 1, True, weights_from=full_path)
            return out

    def restored(path: str) -> dict:
        """A fresh dummy-weight engine: prepare, restore `path` (weights + KV), first token."""
        with EngineWorker(driver_spec("vllm"), {**cfg, "load_format": "dummy"}) as w:
            prepare, rep, weights_s = prepared_restore(w, path)
            first = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
            return {"prepare_s": prepare, "restore_s": rep["seconds"], "weights_s": weights_s,
                    "weights_gb_s": rep["weights_bytes"] / weights_s / 1e9, "weights_route": rep.get("weights_route"),
                    "cached_tokens": first["cached_tokens"], "restore": rep}

    phase(r, "snapshot", engine)
    phase(r, "restore_full", lambda: restored(full_path))
    phase(r, "restore_session", lambda: restored(session_path))
    for path in (full_path, session_path):
        if os.path.exists(path):
            os.unlink(path)
    try:
        r["ratio_session_vs_full_weights_restore_gb_s"] = (r["restore_session"]["weights_gb_s"]
                                                           / r["restore_full"]["weights_gb_s"])
        r["ratio_session_snapshot_vs_kv_only_s"] = (r["snapshot"]["session"]["median_s"]
                                                    / r["snapshot"]["kv"]["median_s"])
        for kind in ("full", "kv"):  # into the page cache, the flush apart
            r[f"ratio_{kind}_recycled_vs_fresh_gb_s"] = (r["snapshot"][f"{kind}_recycled"]["gb_s_into_page_cache"]
                                                       / r["snapshot"][kind]["gb_s_into_page_cache"])
    except (KeyError, TypeError) as exc:
        r["ratios_error"] = f"a phase failed: {exc!r}"
    if "full" in r["snapshot"]:
        nbytes = r["snapshot"]["full"]["bytes"]
        phase(r, "d2h_pinned_gb_s", lambda: pinned_memcpy_gb_s(min(nbytes, 8 * 2**30), reps=3, to_host=True))
        phase(r, "plain_write", lambda: plain_write(os.path.join(args.dir, "plain-write.bin"), nbytes))
        full = r["snapshot"]["full"]
        r["ratio_snapshot_vs_plain_write_page_cache"] = full["gb_s_into_page_cache"] / r["plain_write"]["write_gb_s"]
        r["ratio_snapshot_vs_d2h_pinned"] = full["gb_s_into_page_cache"] / r["d2h_pinned_gb_s"]
        r["ratio_snapshot_with_flush_vs_plain_write_and_flush"] = (
            full["gb_s_with_flush"] / r["plain_write"]["write_and_flush_gb_s"])
    r["includes"] = ("snapshot seconds are the driver call's (in-process engine); phases: capture (KV gather "
                     "+ parameters to host), write (CRC32C + write into the page cache), flush (fsync + rename + "
                     "directory fsync); GB/s into the page cache leaves the flush out, shown apart; d2h is one "
                     "torch copy of min(file size, 8 GiB) from device to pinned host memory")
    print(f"receipt: {write_receipt('gpu_snapshot', r)}")


if __name__ == "__main__":
    main()
