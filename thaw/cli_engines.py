"""`thaw` commands that drive engines: fork (fresh children), fleet (a pool of started
engines, here or on Ray) and snapshot / restore / status of a running server."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli_args import UsageError, json_argument


def _engine_config(args: argparse.Namespace) -> dict[str, Any]:
    config = json_argument(args.engine_config, "--engine-config")
    if not isinstance(config, dict):
        raise UsageError(f"--engine-config must be a JSON object, found {type(config).__name__}")
    return config


def _print_results(args: argparse.Namespace, results: list[Any], line: Any) -> int:
    """Prints the results as JSON (--json) or one `line(result)` each; the exit code."""
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            print(line(r))
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    from .fork import fork
    from .progress import Steps

    config = _engine_config(args)
    with Steps(quiet=args.quiet) as steps:
        children = fork(args.snapshot, args.n, engine=args.engine, engine_config=config,
                        max_tokens=args.max_tokens, temperature=args.temperature, progress=steps.step)
    return _print_results(args, children, lambda c: (
        f"child {c.index}: {c.cached_tokens} cached tokens, restore {c.restore_seconds * 1e3:.0f} ms, "
        f"TTFT {c.ttft_seconds * 1e3:.1f} ms, seed {c.seed}: {c.tokens}"))


def cmd_fleet(args: argparse.Namespace) -> int:
    from .fleet import EnginePool, LocalPlacement, RayPlacement
    from .progress import Steps

    config = _engine_config(args)
    if args.placement == "ray":
        import ray

        ray.init(address=args.ray_address, log_to_driver=False)
        placement = RayPlacement({"num_cpus": args.cpus_per_engine, "num_gpus": args.gpus_per_engine})
    else:
        placement = LocalPlacement()
    with Steps(quiet=args.quiet) as steps:
        def on_event(kind: str, info: dict) -> None:
            where = (f"branches {info['branches'][0]}..{info['branches'][1] - 1}" if "branches" in info
                     else info.get("work", ""))
            steps.note(f"{info.get('engine', '')}: {kind} {where}".rstrip()
                       + (f" ({info['error']})" if "error" in info else ""))

        with steps.step(f"starting {args.engines} {args.engine} engines ({args.placement})"):
            pool = EnginePool(args.engine, config, args.engines, placement=placement, on_event=on_event)
        try:
            with steps.step(f"forking {args.branches} branches of {args.snapshot}"):
                branches = pool.fork(args.snapshot, args.branches, max_tokens=args.max_tokens,
                                     temperature=args.temperature, seed=args.seed)
        finally:
            pool.close()
    return _print_results(args, branches, lambda b: (
        f"branch {b.index} ({b.engine}, seed {b.seed}, {b.cached_tokens} cached tokens"
        f"{', re-run' if b.attempts > 1 else ''}): {b.tokens}"))


def cmd_remote(args: argparse.Namespace) -> int:
    """snapshot / restore / status of a running server, through its /thaw/ endpoints."""
    from .http_client import call

    if args.command == "status":
        reply = call(args.url, "status", api_key=args.api_key)
    elif args.command == "snapshot":
        body: dict[str, Any] = {"path": args.path, "weights": not args.no_weights}
        if args.weights_format:
            body["weights_format"] = args.weights_format
        if args.weights_from:
            body["weights_from"] = args.weights_from
        if args.direct:
            body["direct"] = True
        if args.recycle:
            body["recycle"] = args.recycle
        reply = call(args.url, "snapshot", body, api_key=args.api_key)
    else:
        reply = call(args.url, "restore", {"path": args.path, "weights": not args.no_weights,
                                           "trust_unknown_weights": args.trust_unknown_weights},
                     api_key=args.api_key)
    print(json.dumps(reply, indent=2, sort_keys=True))
    return 0



def add_engine_commands(sub: Any) -> None:
    """Adds fork, fleet and the running-server commands (snapshot, restore, status)."""
    p = sub.add_parser("fork", help="restore a snapshot into N fresh engines and continue each")
    p.add_argument("snapshot")
    p.add_argument("-n", type=int, default=4, help="number of children")
    p.add_argument("--engine", default="vllm")
    p.add_argument("--engine-config", required=True, help='JSON engine config, e.g. {"model": "DIR"}')
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_fork)
    p = sub.add_parser("fleet", help="fork a snapshot into many branches over a pool of started engines "
                                     "(here, or Ray actors)")
    p.add_argument("snapshot", help="a path every engine can read, or a URL (s3://...)")
    p.add_argument("--engines", type=int, default=2, help="engines in the pool")
    p.add_argument("--branches", type=int, default=8)
    p.add_argument("--placement", choices=["local", "ray"], default="local",
                   help="child processes of this one, or Ray actors (default local)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: ray.init's own choice)")
    p.add_argument("--cpus-per-engine", type=float, default=1, help="Ray resources per engine")
    p.add_argument("--gpus-per-engine", type=float, default=0, help="Ray resources per engine")
    p.add_argument("--engine", default="vllm")
    p.add_argument("--engine-config", required=True, help='JSON engine config, e.g. {"model": "DIR"}')
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="branch i samples with seed SEED+i")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_fleet)
    server_help = ("URL of a server with thaw's endpoints: vllm serve ... --middleware "
                   "thaw.adapters.vllm.server.ThawMiddleware, or an SGLang server where thaw is installed")
    for name, text in (("snapshot", "snapshot a running server's engine to a file under its THAW_SNAPSHOT_DIR "
                                    "(or an object under its THAW_SNAPSHOT_URLS)"),
                       ("restore", "restore a running server's engine from a file under its THAW_SNAPSHOT_DIR "
                                   "(or an object under its THAW_SNAPSHOT_URLS)"),
                       ("status", "a running server's engine identity and cache state")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--url", required=True, help=server_help)
        p.add_argument("--api-key", default=None, help="the server's API key (default: $THAW_API_KEY, else $VLLM_API_KEY)")
        if name != "status":
            p.add_argument("path", help="relative to the server's THAW_SNAPSHOT_DIR, or a URL under one of its "
                           "THAW_SNAPSHOT_URLS prefixes")
            p.add_argument("--no-weights", action="store_true", help="leave the weights out (snapshot) or keep "
                           "the engine's own, which must match the snapshot's digest (restore)")
        if name == "snapshot":
            p.add_argument("--weights-format", default=None, help="checkpoint or vllm.parameters")
            p.add_argument("--weights-from", default=None, metavar="SNAPSHOT",
                           help="reference the weights from this snapshot (under THAW_SNAPSHOT_DIR, holding the "
                           "engine's weights) instead of copying them: the new snapshot costs its KV only")
            p.add_argument("--direct", action="store_true",
                           help="write past the page cache (O_DIRECT): for snapshots kept for later; a restore "
                           "then reads them from the disk")
            p.add_argument("--recycle", default=None, metavar="RETIRED",
                           help="write into this retired snapshot's file (in the same directory, replaced by the new "
                           "one): its cached pages are overwritten instead of new ones allocated")
        if name == "restore":
            p.add_argument("--trust-unknown-weights", action="store_true",
                           help="with --no-weights: accept an engine whose weights digest is unknown")
        p.set_defaults(func=cmd_remote)
