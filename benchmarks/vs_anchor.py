"""thaw beside the anchor project (thaw-vllm 0.6.0 with thaw-native 0.3.2) on one card, one run.

Same model (the 8B-shaped bf16 Llama of `gpu_e2e_vllm`, random weights, built on the device),
same 4k-token trunk, same engine settings (in-process vLLM, CUDA graphs for decoding, prefix
caching), every engine in its own process, one engine on the card at a time. The anchor's
wheels (`--anchor-wheels`, fetched by scripts/gpu/prepare_anchor_bundle.sh) are installed
into their own directory and run by `anchor_side.py` in processes whose import path puts
them first, since both projects ship a module named `thaw`.

Steps, each side through its own public API, the anchor's as its README shows:
  weights snapshot   thaw: `snapshot` with the prefix cache emptied (weights as vLLM
                     parameters, no KV), into the page cache, into the page cache of the
                     last such snapshot's file (`recycle=`, as a loop that replaces its
                     snapshot), and, with `direct=True`, past it as the anchor writes;
                     anchor: `freeze_model_tp`
  KV snapshot        thaw: `snapshot(weights=False)` of the trunk, fresh and recycled;
                     anchor: `fork` (its KV freeze)
  weights restore    into a dummy-weight engine; thaw: stage + check + copy into the
                     parameters (`prepare`, once per file, shown apart and counted in a second
                     ratio); anchor: `restore_model_tp`
  KV restore         into the warm child: thaw `restore(weights=False)`; anchor `ForkHandle.hydrate`
  fork round         empty the prefix cache, restore the trunk's KV, 4 branches x 64 tokens
Snapshot times include each side's own writing; thaw's also its fsync (reported apart as the
flush), and the anchor's file is fsync'd after its call returns, timed apart, so both sides
can be compared into the page cache and durable on disk. A step the anchor fails is recorded
with its error and traceback, and what needs it as skipped.
Ratios are anchor seconds / thaw seconds (above 1: thaw is faster).
Usage: python benchmarks/vs_anchor.py --anchor-wheels DIR [--trunk 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import time

from thaw.adapters.vllm.driver import ENGINE_DEFAULTS
from thaw.core.registry import driver_spec
from thaw.workers import EngineWorker

from anchor_side import FORK_DIR, WEIGHTS_FILE
from gpu_e2e_vllm import ENGINE, build_model, fork_round, medians, phase, pinned_memcpy_gb_s, prepared_restore
from gpu_snapshot import recycled_snapshots, snapshots
from receipt import write_receipt

HERE = os.path.dirname(os.path.abspath(__file__))


def install_anchor(wheels: str, target: str) -> dict:
    """The anchor's two wheels installed into `target` (no dependencies: torch and vLLM are
    the box's); their names and SHA-256 for the receipt."""
    found = sorted(glob.glob(os.path.join(wheels, "thaw_vllm-*.whl")) + glob.glob(os.path.join(wheels, "thaw_native-*.whl")))
    if len(found) != 2:
        raise FileNotFoundError(f"{wheels} must hold one thaw_vllm and one thaw_native wheel, found {found}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", target, *found], check=True)
    return {os.path.basename(w): hashlib.sha256(open(w, "rb").read()).hexdigest() for w in found}


def anchor_role(role: str, site: str, engine: dict, args) -> dict:
    """One `anchor_side.py` process; its RESULT line, or the failure of the process itself."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the anchor's KV path needs the in-process engine
           "VLLM_PLUGINS": ""}  # neither project's vLLM plugin (both are named "thaw"); the anchor registers its own
    cmd = [sys.executable, os.path.join(HERE, "anchor_side.py"), role, "--engine", json.dumps(engine),
           "--trunk", str(args.trunk), "--dir", args.dir, "--rounds", str(args.rounds)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=args.dir, capture_output=True, text=True, timeout=args.role_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"error": f"anchor {role} process exited {proc.returncode} without a result",
                "output_tail": (proc.stdout + proc.stderr)[-4000:]}
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_s"] = time.perf_counter() - t0
    out["stderr_tail"] = proc.stderr[-1500:]
    return out


def remove_anchor_snapshots(work: str) -> None:
    """The anchor's weights file and fork state, once its child has read them."""
    import shutil

    for name in (WEIGHTS_FILE, FORK_DIR):
        path = os.path.join(work, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)


def thaw_parent(engine: dict, trunk: list[int], args) -> dict:
    paths = {k: os.path.join(args.dir, f"thaw-{k}.thaw") for k in ("kv", "full", "weights", "weights-direct")}
    with EngineWorker(driver_spec("vllm"), engine) as w:
        prefill = w.call("generate", prompt_token_ids=trunk, max_tokens=1)
        cached = w.call("generate", prompt_token_ids=trunk, max_tokens=16)
        out = {"prefill_ttft_s": prefill["seconds"], "cached_tokens_out": cached["tokens"],
               "kv_snapshot": snapshots(w, paths["kv"], 1, False),
               "full_snapshot": snapshots(w, paths["full"], 1, True)}
        out["kv_snapshot_recycled"] = recycled_snapshots(w, paths["kv"], args.rounds, False)
        os.unlink(out["kv_snapshot_recycled"]["last_path"])
        w.call("reset_prefix_cache")
        out["weights_snapshot"] = snapshots(w, paths["weights"], 1, True)
        out["weights_snapshot_recycled"] = recycled_snapshots(w, paths["weights"], 2, True)
        os.unlink(out["weights_snapshot_recycled"]["last_path"])  # one 16 GB snapshot beside the full one
        out["weights_snapshot_direct"] = snapshots(w, paths["weights-direct"], 1, True, direct=True)
    os.unlink(paths["weights-direct"])
    return out


def thaw_child(engine: dict, trunk: list[int], args) -> dict:
    full = os.path.join(args.dir, "thaw-full.thaw")
    with EngineWorker(driver_spec("vllm"), {**engine, "load_format": "dummy"}) as w:
        prepare, rep, weights_s = prepared_restore(w, full)
        out16 = w.call("generate", prompt_token_ids=trunk, max_tokens=16)
        rounds = [fork_round(w, full, trunk)[1] for _ in range(args.rounds)]
    return {"prepare_s": prepare, "restore": rep, "weights_s": weights_s, "weights_bytes": rep["weights_bytes"],
            "weights_gb_s": rep["weights_bytes"] / weights_s / 1e9, "cached_tokens": out16["cached_tokens"],
            "tokens_out": out16["tokens"], "fork_rounds": {"rounds": rounds, **medians(rounds, "restore_s", "decode_s", "round_s")}}


def compare(r: dict) -> dict:
    """Anchor seconds / thaw seconds per step, with what each side includes; a step the
    anchor failed or skipped says so instead of a ratio."""
    a_par, a_child, t_par, t_child = r["anchor_parent"], r["anchor_child"], r["thaw_parent"], r["thaw_child"]
    out: dict = {}

    def ratio(name: str, anchor_step: dict, anchor_s, thaw_s: float, includes: str) -> None:
        if "error" in anchor_step or "skipped" in anchor_step:
            out[name] = {"anchor": anchor_step.get("error") or anchor_step["skipped"], "thaw_s": thaw_s,
                         "includes": includes}
        else:
            out[name] = {"anchor_s": anchor_s, "thaw_s": thaw_s, "anchor_over_thaw": anchor_s / thaw_s,
                         "includes": includes}

    wf, ws = a_par.get("weights_freeze", {}), t_par["weights_snapshot"]
    ratio("weights_snapshot_into_page_cache", wf, wf.get("wall_s"), ws["into_page_cache_s"],
          "anchor: freeze_model_tp's call; thaw: capture + CRC32C + write, its fsync left out")
    wrc = t_par["weights_snapshot_recycled"]
    ratio("weights_snapshot_into_page_cache_recycled", wf, wf.get("wall_s"), wrc["into_page_cache_s"],
          "anchor: freeze_model_tp's call; thaw: capture + CRC32C + write into the last weights snapshot's "
          "cached pages (recycle=), its fsync left out; median of 2")
    ratio("weights_snapshot_durable_recycled", wf, (wf.get("wall_s") or 0) + (wf.get("fsync_after_s") or 0),
          wrc["median_s"], "both written and fsync'd; thaw's into the last snapshot's file (recycle=)")
    ratio("weights_snapshot_durable", wf, (wf.get("wall_s") or 0) + (wf.get("fsync_after_s") or 0), ws["median_s"],
          "both sides written and fsync'd (the anchor's file fsync'd after its call)")
    wd = t_par["weights_snapshot_direct"]
    ratio("weights_snapshot_past_the_page_cache", wf, (wf.get("wall_s") or 0) + (wf.get("fsync_after_s") or 0),
          wd["median_s"], "both written past the page cache and fsync'd: the anchor's O_DIRECT freeze + its fsync; "
          "thaw snapshot(direct=True): capture + CRC32C + O_DIRECT write + fsync")
    kf, ks = a_par.get("kv_freeze", {}), t_par["kv_snapshot"]
    ratio("kv_snapshot_into_page_cache", kf, kf.get("wall_s"), ks["into_page_cache_s"],
          "anchor: fork()'s call (KV freeze + its handle); thaw: KV + prefix index, fsync left out")
    kr = t_par["kv_snapshot_recycled"]
    ratio("kv_snapshot_into_page_cache_recycled", kf, kf.get("wall_s"), kr["into_page_cache_s"],
          "thaw: KV + prefix index into the last KV snapshot's file (recycle=), fsync left out; median of --rounds")
    ratio("kv_snapshot_durable", kf, (kf.get("wall_s") or 0) + (kf.get("fsync_after_s") or 0), ks["median_s"],
          "both written and fsync'd")
    wr = a_child.get("weights_restore", {})
    ratio("weights_restore", wr, wr.get("wall_s"), t_child["weights_s"],
          "anchor: restore_model_tp's call; thaw: read + CRC32C check + copy into the parameters, prepare apart")
    ratio("weights_restore_prepare_counted", wr, wr.get("wall_s"), t_child["weights_s"] + t_child["prepare_s"],
          "the same with thaw's prepare (map + register the file with CUDA, once per file) counted")
    fr, tf = a_child.get("fork_rounds", {}), t_child["fork_rounds"]
    ratio("kv_restore_in_round", fr, fr.get("median_restore_s"), tf["median_restore_s"],
          "median over the rounds: anchor ForkHandle.hydrate; thaw restore(weights=False), checked")
    ratio("fork_round", fr, fr.get("median_round_s"), tf["median_round_s"],
          "median round: restore the trunk's KV + 4 branches x 64 tokens")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor-wheels", required=True, help="directory with the thaw_vllm and thaw_native wheels")
    ap.add_argument("--model", default="/tmp/llama8b")
    ap.add_argument("--trunk", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/vs-anchor", help="snapshots of both sides (local disk)")
    ap.add_argument("--role-timeout", type=int, default=420, help="seconds each anchor process may take")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    trunk = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    r: dict = {"model": "8B-shaped Llama, bf16, random weights", "trunk_tokens": args.trunk, "rounds": args.rounds,
               "build_model_s": build_model(args.model), "pinned_h2d_gb_s": pinned_memcpy_gb_s()}
    engine = {k: v for k, v in {**ENGINE_DEFAULTS, **ENGINE, "model": args.model}.items() if v is not None}
    r["engine"] = engine
    site = os.path.join(args.dir, "anchor-site")
    phase(r, "anchor_wheels", lambda: install_anchor(args.anchor_wheels, site))
    phase(r, "anchor_parent", lambda: anchor_role("parent", site, engine, args))
    phase(r, "anchor_child", lambda: anchor_role("child", site, engine, args))
    remove_anchor_snapshots(args.dir)  # the box's disk holds the model and thaw's two 16 GB files, not a third
    phase(r, "thaw_parent", lambda: thaw_parent(engine, trunk, args))
    phase(r, "thaw_child", lambda: thaw_child(engine, trunk, args))
    try:
        r["side_by_side"] = compare(r)
        r["thaw_output_equals_parent_cached"] = r["thaw_child"]["tokens_out"] == r["thaw_parent"]["cached_tokens_out"]
        kv = r["anchor_child"].get("kv_restore", {})
        if "tokens_out" in kv:
            r["anchor_output_equals_its_parent_cached"] = kv["tokens_out"] == r["anchor_parent"]["cached_tokens_out"]
    except (KeyError, TypeError) as exc:
        r["ratios_error"] = f"a phase failed: {exc!r}"
    print(json.dumps(r.get("side_by_side", {}), indent=1))
    print(f"receipt: {write_receipt('vs_anchor', r)}")


if __name__ == "__main__":
    main()
