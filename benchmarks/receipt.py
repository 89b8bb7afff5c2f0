"""Writes benchmark receipts: results plus the hardware, versions and date they came from."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

RECEIPTS = Path(__file__).resolve().parent / "receipts"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import torch

    import thaw

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "thaw": thaw.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True).stdout.strip()
        except OSError:
            info["driver"] = "unknown"
    return info


def write_receipt(name: str, results: dict[str, Any]) -> Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    RECEIPTS.mkdir(parents=True, exist_ok=True)
    path = RECEIPTS / f"{name}-{now:%Y%m%d}.json"
    body = {"benchmark": name, "date": now.isoformat(timespec="seconds"), "machine": machine(),
            "results": results}
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return path
