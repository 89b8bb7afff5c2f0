"""Writers' temporary files: how they are named, and removing those whose writer is gone.

A snapshot is built under a temporary name beside its target and renamed into place when
complete (`container.write_container`); a writer killed before that leaves the temporary
file, which is never taken for a snapshot and is removed by the next writer of that name
(or `thaw gc`) once the process that made it no longer runs.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional

TEMP_MARK = ".tmp-"
"""Writers build `.NAME.tmp-PID-HEX` beside the target `NAME`; such a file is never a
finished snapshot (opening one is refused) and is removed by the next save to that name
once its writer process is gone."""


def _temp_writer_pid(name: str) -> Optional[int]:
    """The writer's process id if `name` is a writer's temporary file name, else None."""
    if not name.startswith(".") or TEMP_MARK not in name:
        return None
    pid, _, rest = name.rsplit(TEMP_MARK, 1)[1].partition("-")
    if pid.isdigit() and len(rest) == 8 and all(c in "0123456789abcdef" for c in rest):
        return int(pid)
    return None


def is_temp_name(name: str) -> bool:
    """Whether `name` is a writer's temporary file name (see TEMP_MARK)."""
    return _temp_writer_pid(name) is not None


def _remove_if_writer_gone(entry: Path) -> bool:
    """Removes `entry` if it is a writer's temporary file whose process no longer runs."""
    pid = _temp_writer_pid(entry.name)
    if pid is None or pid == os.getpid() or _process_alive(pid):
        return False
    entry.unlink(missing_ok=True)
    return True


def sweep_stale_temps(path: Path) -> list[Path]:
    """Removes temporary files that earlier writers of `path` left (killed, crashed) and whose
    process no longer runs; returns what was removed."""
    prefix = f".{path.name}{TEMP_MARK}"
    return [entry for entry in path.parent.glob(f"{glob.escape(prefix)}*")
            if entry.name.rsplit(TEMP_MARK, 1)[0] + TEMP_MARK == prefix and _remove_if_writer_gone(entry)]


def sweep_directory(directory: str | os.PathLike) -> list[Path]:
    """Removes every writer's temporary file in `directory` whose writer process no longer
    runs (what `thaw gc` does); returns what was removed."""
    return [entry for entry in Path(directory).iterdir() if _remove_if_writer_gone(entry)]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
