"""The `thaw` command line: inspect, verify, diff, demo (no GPU or engine needed)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from typing import Optional

from .core import EngineUnsupported, SchemaError, ThawError, load, save
from .core.container import Container
from .core.layouts import NAMED_LAYOUTS as NAMED_LAYOUT_NAMES
from .core.summary import diff_snapshots, inspect_snapshot

PROGRESS_MIN_BYTES = 256 * 2**20


def _progress_printer(stream):
    start = time.monotonic()

    def show(done: int, total: int) -> None:
        if total < PROGRESS_MIN_BYTES:
            return
        rate = done / max(1e-9, time.monotonic() - start) / 1e9
        stream.write(f"\rverifying {done / 2**20:,.0f} / {total / 2**20:,.0f} MiB ({rate:.2f} GB/s)")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_snapshot(load(args.path, verify=False))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    ident = info["identity"]
    print(f"{info['path']}: {info['file_bytes']:,} bytes, {len(info['sections'])} sections")
    print(f"  engine     {ident['engine']} {ident['engine_version']}  (tp {ident['tp_rank']}/{ident['tp_size']})")
    print(f"  model      {ident['model_architecture']}  dtype {ident['dtype']}  layers {ident['num_layers']}"
          f"  kv heads {ident['num_kv_heads']}  head dim {ident['head_dim']}")
    print(f"  weights    {info['weights']['count']} tensors, {info['weights']['bytes']:,} bytes")
    kv = info["kv"]
    if kv:
        print(f"  kv         {kv['num_pages']} pages x {kv['num_layers']} layers, layout {kv['layout']},"
              f" page size {kv['page_size']}, {kv['bytes']:,} bytes")
    p = info["prefix"]
    print(f"  prefix     {p['nodes']} nodes, {p['tokens']} tokens, longest prefix {p['longest_prefix']} tokens")
    for r in info["requests"]:
        print(f"  request    {r['request_id']}: {r['status']}, {r['prompt_tokens']} prompt + "
              f"{r['output_tokens']} output tokens, {r['num_computed_tokens']} computed")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from .core.container import sweep_directory

    removed = sweep_directory(args.directory)
    for path in removed:
        print(f"removed {path}")
    print(f"thaw gc: {len(removed)} temporary file(s) of crashed writers removed from {args.directory}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    c = Container(args.path)
    c.verify(progress=None if args.quiet else _progress_printer(sys.stderr))
    total = sum(s.padded_length for s in c.sections.values())
    print(f"{args.path}: OK ({len(c.sections)} sections, {total:,} section bytes, every CRC32C matches)")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    d = diff_snapshots(load(args.a, verify=False), load(args.b, verify=False))
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    if d["identity_differences"]:
        print("identity differences:")
        for key, (va, vb) in d["identity_differences"].items():
            print(f"  {key}: {va!r} -> {vb!r}")
    else:
        print("identity: same")
    if d["comparable"]:
        print(f"shared prefix: {d['shared_prefix_tokens']} tokens in {d['shared_pages']} pages; "
              f"only in A: {d['only_in_a_pages']} pages; only in B: {d['only_in_b_pages']} pages")
    else:
        print(f"prefix trees not comparable page by page (page sizes {d['page_size']})")
    for dv in d["divergences"]:
        print(f"  leaf {dv['leaf']} (only in {dv['only_in'].upper()}) diverges at token {dv['diverges_at_token']}"
              f" of {dv['path_tokens']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.core:
        from .demo import run_demo

        return run_demo(args)
    if importlib.util.find_spec(args.engine) is None:
        raise EngineUnsupported(f"the fork demo with --engine {args.engine} needs {args.engine}: "
                                "install the engines with `bash scripts/setup.sh --engines`, or "
                                "run `thaw demo --core` for the engine-free example")
    from .demo_fork import run_fork_demo

    return run_fork_demo(args)


def cmd_convert(args: argparse.Namespace) -> int:
    from .core.layouts import named_layout
    from .core.recut import recut

    snap = load(args.src, verify=False)
    if snap.kv is None or snap.prefix is None:
        raise SchemaError(f"{args.src} holds no KV pages and prefix tree to convert")
    src = snap.kv.layout
    layout = named_layout(args.layout, args.page_size or src.page_size, src.num_kv_heads,
                          src.head_dim, src.dtype)
    out, report = recut(snap, layout)
    save(out, args.dst)
    print(json.dumps(report.to_json(), indent=2) if args.json else
          f"{args.dst}: {report.target_tokens} tokens in pages of {report.target_page_size} "
          f"({report.target_layout}) from {report.source_tokens} in pages of "
          f"{report.source_page_size} ({report.source_layout}); dropped {report.leaf_tokens_dropped} "
          f"tokens after the last whole page of a path and {report.requests_dropped} requests")
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    from .fork import fork

    children = fork(args.snapshot, args.n, engine=args.engine,
                    engine_config=json.loads(args.engine_config), max_tokens=args.max_tokens,
                    temperature=args.temperature)
    if args.json:
        print(json.dumps([c.to_json() for c in children], indent=2))
        return 0
    for c in children:
        print(f"child {c.index}: {c.cached_tokens} cached tokens, restore {c.restore_seconds * 1e3:.0f} ms, "
              f"TTFT {c.ttft_seconds * 1e3:.1f} ms, seed {c.seed}: {c.tokens}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thaw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="identity, sections, prefix tree and requests of a snapshot")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="stable JSON output (docs/cli.md)")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help="check the CRC32C of every byte; exit 0 only when intact")
    p.add_argument("path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("gc", help="remove temporary files that crashed snapshot writers left in a directory")
    p.add_argument("directory")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser("diff", help="identity differences, shared prefix, divergence points")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("demo", help="fork a warm engine (vLLM or SGLang) into fresh children")
    p.add_argument("--workdir", default=None, help="where to write the model and snapshots (default: a temp dir)")
    p.add_argument("--core", action="store_true", help="the engine-free example instead: save, verify, inspect, load")
    p.add_argument("--engine", choices=["vllm", "sglang"], default="vllm", help="engine to fork (default vllm)")
    p.add_argument("--context", type=int, default=2048, help="shared context length in tokens")
    p.add_argument("--children", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=16)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("convert", help="re-cut a snapshot's KV pages and prefix tree for another engine's page size and layout")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--layout", required=True, help="target layout: " + ", ".join(sorted(NAMED_LAYOUT_NAMES)))
    p.add_argument("--page-size", type=int, default=0, help="tokens per target page (default: the source's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("fork", help="restore a snapshot into N fresh engines and continue each")
    p.add_argument("snapshot")
    p.add_argument("-n", type=int, default=4, help="number of children")
    p.add_argument("--engine", default="vllm")
    p.add_argument("--engine-config", required=True, help='JSON engine config, e.g. {"model": "DIR"}')
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fork)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ThawError as exc:
        print(f"thaw {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"thaw {args.command}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
