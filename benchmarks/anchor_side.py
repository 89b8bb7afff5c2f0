"""The anchor project's side of `vs_anchor.py`: one role per process, run by it.

Run only by `vs_anchor.py`, in a process whose import path holds the anchor's packages (they
ship a module named `thaw` too): this file imports nothing of this project. Each role builds
one in-process vLLM engine with the settings it is given, calls the anchor's own public API,
and prints one JSON line starting with `RESULT ` (every step's figures, or the error it
raised: a failed step is recorded, and the steps that need it are recorded as skipped).

  parent  real weights: prefill the trunk, then `thaw_vllm.freeze_model_tp` (weights) and
          `thaw_vllm.fork` (its KV freeze) into `--dir`; the fsync of each file, timed apart
  child   dummy weights: `thaw_vllm.restore_model_tp`, then `ForkHandle.hydrate` (its KV
          restore) and fork rounds: empty the prefix cache, hydrate, 4 branches x 64 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback

# What the anchor writes into --dir: its weights file and its fork's state directory.
WEIGHTS_FILE, FORK_DIR = "anchor-weights.thaw", "anchor-fork"


def timed_step(results: dict, name: str, fn):
    """Runs `fn`, recording its wall time and return value, or its error; returns the value
    (None on error)."""
    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # the anchor's failure is a result here, recorded with its error
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "trace": traceback.format_exc()[-3000:]}
        print(f"{name}: failed: {results[name]['error'][:300]}", flush=True)
        return None
    results[name] = {"wall_s": time.perf_counter() - t0, "report": _plain(value)}
    print(f"{name}: {results[name]['wall_s']:.3f} s", flush=True)
    return value


def _plain(value):
    """A JSON-ready copy of an anchor report (drops per-parameter and per-block lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in ("params", "block_ids")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value][:16]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)[:200]


def fsync_s(path: str) -> float:
    """Time to make `path`'s written pages durable (what a snapshot's flush costs)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def skipped(results: dict, name: str, because: str) -> None:
    results[name] = {"skipped": f"needs {because}, which failed"}


def parent(llm, args, r: dict) -> None:
    import thaw_vllm
    from vllm import SamplingParams

    trunk = {"prompt_token_ids": args.trunk_ids}
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    llm.generate([trunk], SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
    r["prefill_ttft_s"] = time.perf_counter() - t0
    out = llm.generate([trunk], greedy, use_tqdm=False)[0]
    r["cached_tokens_out"] = list(out.outputs[0].token_ids)
    weights = os.path.join(args.dir, WEIGHTS_FILE)
    if timed_step(r, "weights_freeze", lambda: thaw_vllm.freeze_model_tp(llm, weights)) is not None:
        r["weights_freeze"]["bytes"] = os.path.getsize(weights)
        r["weights_freeze"]["fsync_after_s"] = fsync_s(weights)
    state = os.path.join(args.dir, FORK_DIR)
    handle = timed_step(r, "kv_freeze", lambda: thaw_vllm.fork(llm, state_dir=state,
                                                               prompt_token_ids=args.trunk_ids))
    if handle is not None:
        r["kv_freeze"]["bytes"] = os.path.getsize(handle.kv_path)
        r["kv_freeze"]["fsync_after_s"] = fsync_s(handle.kv_path)
        r["kv_freeze"]["prefix_tokens"] = handle.prefix_tokens


def child(llm, args, r: dict) -> None:
    import thaw_vllm
    from thaw_vllm.fork import ForkHandle
    from vllm import SamplingParams

    trunk = {"prompt_token_ids": args.trunk_ids}
    weights = os.path.join(args.dir, WEIGHTS_FILE)
    state = os.path.join(args.dir, FORK_DIR)
    if not os.path.exists(weights):
        skipped(r, "weights_restore", "the parent's weights freeze")
    elif timed_step(r, "weights_restore", lambda: thaw_vllm.restore_model_tp(llm, weights)) is not None:
        r["weights_restore"]["bytes"] = os.path.getsize(weights)
    if not os.path.exists(os.path.join(state, "handle.json")):  # written by a fork that succeeded
        for name in ("kv_restore", "fork_rounds"):
            skipped(r, name, "the parent's KV freeze (thaw_vllm.fork)")
        return
    handle = timed_step(r, "fork_handle_load", lambda: ForkHandle.load(state))
    if handle is None:
        for name in ("kv_restore", "fork_rounds"):
            skipped(r, name, "ForkHandle.load")
        return
    if timed_step(r, "kv_restore", lambda: handle.hydrate(llm)) is None:
        skipped(r, "fork_rounds", "the KV restore (ForkHandle.hydrate)")
        return
    out = llm.generate([trunk], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True),
                       use_tqdm=False)[0]
    r["kv_restore"].update(cached_tokens=out.num_cached_tokens, tokens_out=list(out.outputs[0].token_ids))
    rounds = []
    for _ in range(args.rounds):
        llm.reset_prefix_cache()
        t0 = time.perf_counter()
        handle.hydrate(llm)
        restored = time.perf_counter() - t0
        outs = llm.generate([trunk] * 4, [SamplingParams(max_tokens=64, temperature=1.0, seed=i, ignore_eos=True)
                                          for i in range(4)], use_tqdm=False)
        decoded = time.perf_counter() - t0 - restored
        rounds.append({"restore_s": restored, "decode_s": decoded, "round_s": restored + decoded,
                       "cached_tokens": [o.num_cached_tokens for o in outs]})
    r["fork_rounds"] = {"rounds": rounds, **{f"median_{k}": statistics.median(x[k] for x in rounds)
                                             for k in ("restore_s", "decode_s", "round_s")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("parent", "child"))
    ap.add_argument("--engine", required=True, help="the vLLM LLM(...) settings, as JSON")
    ap.add_argument("--trunk", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    args.trunk_ids = [100 + (i * 7919) % 120000 for i in range(args.trunk)]
    r: dict = {"role": args.role}
    t0 = time.perf_counter()
    from vllm import LLM
    import thaw_vllm

    r["import_s"] = time.perf_counter() - t0
    r["anchor_module"] = os.path.dirname(thaw_vllm.__file__)
    engine = json.loads(args.engine)
    if args.role == "child":
        engine["load_format"] = "dummy"
    t0 = time.perf_counter()
    llm = LLM(**engine)
    r["engine_boot_s"] = time.perf_counter() - t0
    try:
        (parent if args.role == "parent" else child)(llm, args, r)
    except Exception as exc:  # recorded; the orchestrator reads the line either way
        r["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        r["trace"] = traceback.format_exc()[-3000:]
    print("RESULT " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
