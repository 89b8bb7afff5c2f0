"""Taking over a retired snapshot's file for a new one (`write_container(recycle=...)`), and
what must stop that: other names of the file, snapshots that reference its weights, thaw
processes that hold it open or mapped (`Container` shares an `flock` on every file it opens
and keeps it while a mapping of it lives; recycling takes it exclusively)."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Any, Optional

from . import format as fmt
from .confine import check_path
from .errors import FormatError
from .head import read_meta
from .temp_files import is_temp_name
from .weights_ref import read_entry, resolve


def take_for_recycling(recycle: Path, path: Path, tmp: Path, meta: dict[str, Any]) -> int:
    """Renames the retired snapshot `recycle` to the temporary name `tmp` and returns it
    open for writing, its preamble zeroed first, so that from here on no name holds a file
    that passes `open` (a crash leaves a temporary file, swept as any other). Its pages,
    still in the page cache, are then overwritten in place instead of allocated afresh.

    Refused, with the file left as it is: a file with other names (hard links, which would
    change with it); one a snapshot references its weights from (this one, `meta`, or
    another in the same directory or a rank-set folder in it); one a thaw process holds open
    (a restore, a prepared engine: it may map it, and a mapping cut shorter kills its
    process with SIGBUS). The exclusive lock taken here (`flock`) is the one every
    `Container` asks to share while it holds a file open, so neither side can start while
    the other holds it."""
    if recycle.parent.resolve() != path.parent.resolve():
        raise FormatError(f"cannot recycle {recycle} for {path}: a recycled file must be in the target's directory")
    if recycle.resolve() == path.resolve():
        raise FormatError(f"cannot recycle {path} into itself: the old file must stay whole until the new one "
                          "replaces it; recycle a snapshot that is retired")
    if is_temp_name(recycle.name):
        raise FormatError(f"cannot recycle {recycle}: it is a temporary file of an unfinished write")
    check_path(recycle)
    st = os.lstat(recycle)  # FileNotFoundError names it
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"cannot recycle {recycle}: it is not a regular file")
    if st.st_nlink > 1:
        raise FormatError(f"cannot recycle {recycle}: it has {st.st_nlink - 1} other name(s) (hard links), whose "
                          "contents would be rewritten with it")
    fd = os.open(recycle, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)  # read too: it may be mapped (`file_sinks`)
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            raise FormatError(f"cannot recycle {recycle}: it was replaced while being opened")
        if os.pread(fd, len(fmt.MAGIC), 0) != fmt.MAGIC:
            raise FormatError(f"cannot recycle {recycle}: it is not a snapshot file (no thaw magic)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FormatError(f"cannot recycle {recycle}: a thaw process holds it open (a restore, or an engine "
                              "prepared for it, may map it); release it first") from None
        referrer = referrer_of(recycle, path, meta)
        if referrer is not None:
            raise FormatError(f"cannot recycle {recycle}: {referrer} references its weights from it")
        os.rename(recycle, tmp)
        os.pwrite(fd, bytes(fmt.PREAMBLE_SIZE), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def referrer_of(retired: Path, path: Path, meta: dict[str, Any]) -> Optional[str]:
    """The snapshot (`path` itself, by its `meta`, or a file in `retired`'s directory or a
    rank-set folder in it) that references its weights from `retired`, else None."""
    target = os.path.realpath(retired)
    entry = read_entry(meta)
    if entry is not None and os.path.realpath(resolve(entry["path"], path)) == target:
        return f"the snapshot being written ({path})"
    folder = retired.parent
    candidates = [p for p in folder.iterdir() if p.is_file()]
    candidates += [p for sub in folder.iterdir() if sub.is_dir() for p in sub.glob("rank-*.thaw")]
    for candidate in candidates:
        if os.path.realpath(candidate) == target or is_temp_name(candidate.name):
            continue
        try:
            with open(candidate, "rb") as f:
                if f.read(len(fmt.MAGIC)) != fmt.MAGIC:
                    continue  # not a snapshot: it references nothing
            entry = read_entry(read_meta(candidate))
        except (OSError, FormatError):  # gone meanwhile, or not a whole snapshot: it references nothing
            continue
        if entry is not None and os.path.realpath(resolve(entry["path"], candidate)) == target:
            return str(candidate)
    return None
