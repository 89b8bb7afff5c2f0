"""pytest plugin for `python -m thaw.conformance`: says what ran against what."""

from __future__ import annotations

import json
import os
import platform


def pytest_report_header(config) -> list[str]:
    import torch

    import thaw

    spec = json.loads(os.environ.get("THAW_CONFORMANCE_SPEC", "{}"))
    return [f"thaw conformance: driver {spec.get('driver')}",
            f"  thaw {getattr(thaw, '__version__', '?')}, torch {torch.__version__}, "
            f"python {platform.python_version()}",
            f"  config {json.dumps(spec.get('config'))}; restore targets add "
            f"{json.dumps(spec.get('fresh_config'))}; page size {spec.get('page_size')}"]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    from .harness import ENGINE_INFO

    tr = terminalreporter
    tr.section("thaw conformance report")
    ident = (ENGINE_INFO.get("identity") or {})
    if ident:
        tr.write_line(f"engine {ident.get('engine')} {ident.get('engine_version')}: "
                      f"{ident.get('model_architecture')}, {ident.get('dtype')}, "
                      f"{ident.get('num_layers')} layers, {ident.get('num_kv_heads')} KV heads x "
                      f"{ident.get('head_dim')}, pages of {ident.get('page_size')} ({ident.get('kv_layout')})")
    for outcome in ("passed", "failed", "skipped"):
        for rep in tr.stats.get(outcome, []):
            if getattr(rep, "when", "call") != "call" and outcome != "skipped":
                continue
            reason = ""
            if outcome == "skipped" and isinstance(rep.longrepr, tuple):
                reason = f": {rep.longrepr[2]}"
            tr.write_line(f"  {outcome:7} {rep.nodeid.split('::')[-1]}{reason}")
