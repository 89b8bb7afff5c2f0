"""Writers' temporary files: how they are named, and removing those whose writer is gone.

A snapshot is built under a temporary name beside its target and renamed into place when
complete (`container.write_container`); a writer killed before that leaves the temporary
file, which is never taken for a snapshot and is removed by the next writer of that name
(or `thaw gc`) once the process that made it provably no longer runs: the name carries
the writer's process id and a tag of its machine and process-id namespace (`machine_tag`),
and the writer holds an exclusive `flock` on the file while it writes. A file is removed
only when its tag is this machine's and namespace's (so its process id means the same
process here), that process is gone, and no one holds its lock. A file from another host
or container sharing the volume is left alone.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Optional

TEMP_MARK = ".tmp-"
"""Writers build `.NAME.tmp-PID-HEX` beside the target `NAME` (HEX: 4 digits of
`machine_tag`, 4 random); such a file is never a finished snapshot (opening one is refused)
and is removed by the next save to that name once its writer process is provably gone."""


@functools.lru_cache(maxsize=1)
def machine_tag() -> str:
    """4 hex digits naming this machine's boot and this process-id namespace."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:  # no /proc: the host name alone tells machines apart
        parts.append("?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:4]


def temp_name(target_name: str) -> str:
    """The temporary name a writer of `target_name` builds its file under (see TEMP_MARK)."""
    return f".{target_name}{TEMP_MARK}{os.getpid()}-{machine_tag()}{secrets.token_hex(2)}"


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
    """Removes `entry` if it is a writer's temporary file whose writer is provably gone: made
    on this machine and in this process-id namespace, by a process that no longer runs, and
    locked by no one."""
    pid = _temp_writer_pid(entry.name)
    if pid is None or pid == os.getpid() or not _made_here(entry.name):
        return False
    if _process_alive(pid):
        return False
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a writer still holds it (e.g. another host's, on a shared volume)
        return False
    finally:
        os.close(fd)
    entry.unlink(missing_ok=True)
    return True


def _made_here(name: str) -> bool:
    """Whether the temporary file `name` was made on this machine, in this pid namespace."""
    return name.rsplit(TEMP_MARK, 1)[1].partition("-")[2].startswith(machine_tag())


def sweep_stale_temps(path: Path) -> list[Path]:
    """Removes temporary files that earlier writers of `path` left (killed, crashed) and whose
    process no longer runs; returns what was removed."""
    prefix = f".{path.name}{TEMP_MARK}"
    return [entry for entry in path.parent.glob(f"{glob.escape(prefix)}*")
            if entry.name.rsplit(TEMP_MARK, 1)[0] + TEMP_MARK == prefix and _remove_if_writer_gone(entry)]


def sweep_directory(directory: str | os.PathLike) -> list[Path]:
    """Removes every writer's temporary file in `directory` whose writer process no longer
    runs, and every abandoned staging directory of a tensor-parallel set (what `thaw gc`
    does); returns what was removed."""
    return [entry for entry in Path(directory).iterdir()
            if _remove_if_writer_gone(entry) or _remove_abandoned_set(entry)]


SET_STAGING = re.compile(r"\..+\.(partial|replaced)-[0-9a-f]{12}")
"""A tensor-parallel set's writer stages it as `.NAME.partial-ID` beside its target `NAME`
and moves a previous set aside as `.NAME.replaced-ID` (`tp_files.RankSetWriter`), holding
an exclusive lock (`lock_directory`) on each while it works."""


def lock_directory(path: str | os.PathLike) -> int:
    """An open descriptor of the directory `path` holding an exclusive `flock` (released
    when closed, or when the process dies): a sweeper leaves the directory alone meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _remove_abandoned_set(entry: Path) -> bool:
    """Removes `entry` if it is a set's staging (or set-aside) directory no writer holds."""
    if not SET_STAGING.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
        return False
    fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its writer is still at work
        return False
    else:
        shutil.rmtree(entry)
    finally:
        os.close(fd)
    return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
