"""`capture` and `restore` of an in-memory `StateSnapshot` for an engine whose state lives
in another process (vLLM's engine core, SGLang's scheduler): the snapshot crosses as a
snapshot file in a private directory, written by one side and mapped, CRC-checked, by the
other, so weights and KV are never copied through a pipe. One way for every adapter.

The directory is made 0700 under ``$THAW_CAPTURE_DIR`` (else the system's temporary
directory); a captured snapshot keeps its mapping after the name is removed, and the
directory goes when the snapshot is garbage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Any, Callable

from .schema import StateSnapshot
from .snapshot_io import load, save


def _private_dir(kind: str) -> str:
    return tempfile.mkdtemp(prefix=f"thaw-{kind}-", dir=os.environ.get("THAW_CAPTURE_DIR"))


def capture_through_file(write_snapshot: Callable[[str], Any]) -> StateSnapshot:
    """The snapshot `write_snapshot(path)` makes the other process write to `path`, loaded
    (every CRC checked) here."""
    work = _private_dir("capture")
    path = os.path.join(work, "capture.thaw")
    try:
        write_snapshot(path)
        snap = load(path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    weakref.finalize(snap, shutil.rmtree, work, True)  # the open mapping outlives the name
    os.unlink(path)
    return snap


def restore_through_file(snapshot: StateSnapshot, restore_file: Callable[[str], Any]) -> Any:
    """`restore_file(path)` of `snapshot` saved to a private file; returns what it returns."""
    with tempfile.TemporaryDirectory(prefix="thaw-restore-", dir=os.environ.get("THAW_CAPTURE_DIR")) as work:
        path = os.path.join(work, "restore.thaw")
        save(snapshot, path)
        return restore_file(path)
