"""The `thaw` command line: inspect, verify, diff, convert, gc, fork, fleet, demo.

`--help`, `inspect`, `verify`, `diff` and `gc` need neither torch nor an engine: each
command imports what it uses when it runs. Exit status: 0 success, 2 a `ThawError` (a bad,
corrupted or refused snapshot), 3 an operating-system error, 64 a usage error, 130 ^C.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from typing import Any, NoReturn, Optional

from .cli_args import UsageError
from .cli_engines import add_engine_commands
from .core.errors import EngineUnsupported, SchemaError, ThawError

EXIT_THAW, EXIT_OS, EXIT_USAGE, EXIT_INTERRUPTED = 2, 3, 64, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")


def _unchecked_note(path: str, unchecked: int, label: str = "checked") -> str:
    return (f"  {label:<10} header and prefix tree; {unchecked:,} bytes of weights and KV not read "
            f"(`thaw verify {path}` checks every byte)" if unchecked else f"  {label:<10} every section")


def _shown(value: Any, absent: str = "not recorded") -> str:
    """`value`, or `(absent)` for the defaults a snapshot written without them carries."""
    return str(value) if value not in ("", None, 0, "none", "unknown") else f"({absent})"


def _rank_set(path: str) -> list:
    """The files of the snapshot at `path`, after checking that a directory's rank files
    are every rank of one take (header only)."""
    from .core.tp import check_ranks
    from .core.tp_files import load_ranks, snapshot_paths

    paths = snapshot_paths(path)
    if len(paths) > 1:
        check_ranks(load_ranks(path))
    return paths


def cmd_inspect(args: argparse.Namespace) -> int:
    from .core.snapshot_io import load
    from .core.summary import inspect_snapshot

    paths = _rank_set(args.path)
    infos = [inspect_snapshot(load(p, verify=False)) for p in paths]
    if args.json:
        print(json.dumps(infos[0] if len(paths) == 1 else {"path": args.path, "ranks": infos},
                         indent=2, sort_keys=True))
        return 0
    if len(paths) > 1:
        print(f"{args.path}: tensor-parallel snapshot, {len(paths)} rank files of one take")
    for path, info in zip(paths, infos):
        _print_summary(str(path), info)
    return 0


def _print_summary(path: str, info: dict) -> None:
    ident = info["identity"]
    print(f"{info['path']}: {info['file_bytes']:,} bytes, {len(info['sections'])} sections")
    if ident["engine"] in ("", "none"):
        print("  engine     (none recorded: written through the core API, not by an engine adapter)")
    else:
        print(f"  engine     {ident['engine']} {ident['engine_version']}  "
              f"(tensor-parallel rank {ident['tp_rank']} of {ident['tp_size']})")
    print(f"  model      {_shown(ident['model_architecture'])}  dtype {_shown(ident['dtype'])}"
          f"  layers {_shown(ident['num_layers'])}  kv heads {_shown(ident['num_kv_heads'])}"
          f"  head dim {_shown(ident['head_dim'])}")
    w = info["weights"]
    print(f"  weights    {w['count']} tensors, {w['bytes']:,} bytes" if w["count"] else "  weights    (none)")
    if info["weights_from"]:
        print(f"             referenced from {info['weights_from']} (not held in this file)")
    kv = info["kv"]
    print(f"  kv         {kv['num_pages']} pages x {kv['num_layers']} layers, layout {kv['layout']},"
          f" page size {kv['page_size']}, {kv['bytes']:,} bytes" if kv else "  kv         (none)")
    p = info["prefix"]
    print(f"  prefix     {p['nodes']} nodes, {p['tokens']} tokens, longest prefix {p['longest_prefix']} tokens"
          if p["nodes"] else "  prefix     (none)")
    for r in info["requests"]:
        print(f"  request    {r['request_id']}: {r['status']}, {r['prompt_tokens']} prompt + "
              f"{r['output_tokens']} output tokens, {r['num_computed_tokens']} computed")
    print(_unchecked_note(path, info["unchecked_bytes"]))


def cmd_gc(args: argparse.Namespace) -> int:
    from .core.temp_files import sweep_directory

    removed = sweep_directory(args.directory)
    for path in removed:
        print(f"removed {path}")
    print(f"thaw gc: {len(removed)} temporary file(s) and set folder(s) of crashed writers removed from "
          f"{args.directory}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .core.object_store import open_container
    from .progress import Steps

    paths = _rank_set(args.path)
    for path in paths:
        c = open_container(path)
        total = sum(s.padded_length for s in c.sections.values())
        with Steps(quiet=args.quiet) as steps, steps.step(f"verifying {path}", total) as advance:
            c.verify(progress=advance)
        print(f"{path}: OK ({len(c.sections)} sections, {total:,} section bytes, every CRC32C matches)")
    if len(paths) > 1:
        print(f"{args.path}: OK ({len(paths)} ranks of one take)")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from .core.snapshot_io import load
    from .core.summary import diff_snapshots

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
    for side, path in (("a", args.a), ("b", args.b)):
        print(_unchecked_note(path, d["unchecked_bytes"][side], f"{side.upper()} checked"))
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
    if args.tp is not None:
        return _convert_tp(args)
    if args.layout is None:
        raise UsageError("convert needs --layout NAME (re-cut pages) or --tp N (re-shard KV heads)")
    from .core.layouts import named_layout
    from .core.recut import recut
    from .core.snapshot_io import load, save

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


def _convert_tp(args: argparse.Namespace) -> int:
    from .core.tp import reshard
    from .core.tp_files import load_ranks, save_ranks

    if args.layout is not None or args.page_size:
        raise UsageError("convert does one thing at a time: --tp, or --layout/--page-size")
    if args.tp < 1:
        raise UsageError(f"--tp must be at least 1, not {args.tp}")
    ranks = load_ranks(args.src)
    paths = save_ranks(reshard(ranks, args.tp), args.dst)
    report = {"source_ranks": len(ranks), "target_ranks": args.tp, "files": [str(p) for p in paths]}
    print(json.dumps(report, indent=2) if args.json else
          f"{args.dst}: {args.tp} ranks from {len(ranks)} (KV heads re-sharded, every element copied exactly)")
    return 0


def _layout_names() -> str:
    from .core.layouts import NAMED_LAYOUTS

    return ", ".join(sorted(NAMED_LAYOUTS))


def _version() -> str:
    from . import __version__

    return f"thaw {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="thaw", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="exit status: 0 success, 2 bad or refused snapshot (ThawError), "
                            "3 operating-system error, 64 usage error")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("inspect", help="identity, sections, prefix tree and requests of a snapshot")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="stable JSON output (docs/cli.md)")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help="check the CRC32C of every byte; exit 0 only when intact")
    p.add_argument("path")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr (also off when not a terminal)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("gc", help="remove temporary files (and tensor-parallel staging folders) that crashed "
                       "snapshot writers left in a directory")
    p.add_argument("directory")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser("diff", help="identity differences, shared prefix, divergence points")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("demo", help="fork a warm engine (vLLM or SGLang) into fresh children")
    p.add_argument("--workdir", default=None,
                   help="where to write the model and snapshots (kept); default: a temporary "
                        "directory, removed at the end unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory and print its paths")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--core", action="store_true", help="the engine-free example instead: save, verify, inspect, load")
    p.add_argument("--engine", choices=["vllm", "sglang"], default="vllm", help="engine to fork (default vllm)")
    p.add_argument("--context", type=int, default=2048, help="shared context length in tokens")
    p.add_argument("--children", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=16)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("convert", help="re-cut a snapshot's KV pages and prefix tree for another engine's page "
                       "size and layout, or re-shard its KV heads for another tensor-parallel size")
    p.add_argument("src", help="a snapshot file, or (with --tp) a directory of rank files")
    p.add_argument("dst", help="a snapshot file, or (with --tp N > 1) a directory for N rank files")
    p.add_argument("--layout", default=None, help="target layout: " + _layout_names())
    p.add_argument("--tp", type=int, default=None, help="target tensor-parallel size (rank-RRRRR-of-NNNNN.thaw files)")
    p.add_argument("--page-size", type=int, default=0, help="tokens per target page (default: the source's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)
    add_engine_commands(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return EXIT_USAGE
    command = "thaw"
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            raise UsageError(f"thaw: name a command\n{parser.format_usage().strip()}")
        command = f"thaw {args.command}"
        return args.func(args)
    except UsageError as exc:  # the parser's own say which command; a command's need naming it
        print(exc if command == "thaw" else f"{command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ThawError as exc:
        print(f"{command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_THAW
    except OSError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_OS
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
