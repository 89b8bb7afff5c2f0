"""Run the conformance suite against any engine driver, from the installed package.

    python -m thaw.conformance --driver my_pkg.driver:MyDriver \\
        --config '{"model": "/models/tiny"}' --fresh-config '{"load_format": "dummy"}' \\
        --mismatch 'dtype={"dtype": "bfloat16"}:dtype' --page-size 16 [-- PYTEST ARGS]

`--driver` may also name an engine an installed package registers (`thaw.drivers` entry
points, e.g. ``--driver paged_server`` once examples/paged_server is installed). The driver
implements the worker protocol (thaw.workers): generate, state, snapshot,
restore, add_request, step, finish, info. Exit status is pytest's (0: every check passed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_mismatch(text: str) -> tuple[str, dict, str]:
    """NAME=JSON:FIELD -> (name, config overrides, identity field the refusal must name)."""
    name, sep, rest = text.partition("=")
    overrides, sep2, field = rest.rpartition(":")
    if not (sep and sep2 and name and field):
        raise argparse.ArgumentTypeError(f"--mismatch {text!r}: expected NAME=JSON:FIELD")
    return name, json.loads(overrides), field


def main(argv: list[str] | None = None) -> int:
    import pytest

    from thaw.core.registry import driver_spec

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m thaw.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--driver", required=True,
                    help="module:Class of the engine driver, or the name an installed package registers "
                         "it under (the thaw.drivers entry-point group)")
    ap.add_argument("--config", required=True, help="JSON config of a reference engine (real weights)")
    ap.add_argument("--fresh-config", default="{}", help="JSON overrides for a restore target")
    ap.add_argument("--mismatch", action="append", type=parse_mismatch, default=[],
                    help="NAME=JSON:FIELD, an engine the snapshot must not restore into")
    ap.add_argument("--page-size", type=int, required=True, help="tokens per KV page")
    ap.add_argument("--prompt", default=None, help="JSON list of token ids (default: 300 ids below 504)")
    ap.add_argument("--inflight-max-tokens", type=int, default=12)
    args = ap.parse_args(argv)
    spec = {"driver": driver_spec(args.driver), "config": json.loads(args.config),
            "fresh_config": json.loads(args.fresh_config),
            "mismatches": {n: [o, f] for n, o, f in args.mismatch},
            "prompt": json.loads(args.prompt) if args.prompt else [4 + (i * 37) % 500 for i in range(300)],
            "page_size": args.page_size, "inflight_max_tokens": args.inflight_max_tokens}
    os.environ["THAW_CONFORMANCE_SPEC"] = json.dumps(spec)
    return int(pytest.main(["-p", "thaw.conformance.report", "-p", "no:cacheprovider", "-rs",
                            "--pyargs", "thaw.conformance.spec_tests", *extra]))


if __name__ == "__main__":
    sys.exit(main())
