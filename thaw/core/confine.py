"""Confinement of the files one request may open to one directory, checked as they are opened.

A server's endpoints resolve the paths a request names inside the operator's directory, but a
restore opens more files than it is named: the file a snapshot references its weights from, the
rank files of a tensor-parallel set, whatever a symbolic link inside the directory points at.
While `confined_to(root)` is active (in the process that serves the request: vLLM's engine
core, SGLang's scheduler), every snapshot file thaw opens (`open_checked`) is checked twice:

- before the open, the path with every link resolved must lie inside `root`: a file outside is
  refused without being opened, so the refusal tells nothing about it (not even whether it
  exists);
- after the open, the file actually opened (``/proc/self/fd/N``) must lie inside `root`: a link
  swapped in between the two is caught, and every later read goes through that descriptor.

Outside a `confined_to` block nothing is checked (a library caller opens what it names).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

from .errors import PathOutsideSnapshotDir

_ROOT: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("thaw_confined_root", default=None)


@contextlib.contextmanager
def confined_to(root: Optional[str]) -> Iterator[None]:
    """Within the block, `open_checked` opens only files inside `root` (None: no limit)."""
    token = _ROOT.set(None if root is None else os.path.realpath(root))
    try:
        yield
    finally:
        _ROOT.reset(token)


def _inside(root: str, real: str) -> bool:
    return real != root and os.path.commonpath([root, real]) == root


def _refuse(root: str) -> PathOutsideSnapshotDir:
    return PathOutsideSnapshotDir(f"the request reaches a file outside the snapshot directory {root} (a link, or "
                                  "a file a snapshot references); refused")


def check_path(path: str | os.PathLike) -> None:
    """Refuses `path` when confined and it resolves outside the root (opens nothing)."""
    root = _ROOT.get()
    if root is not None and not _inside(root, os.path.realpath(path)):
        raise _refuse(root)


def open_checked(path: str | os.PathLike, flags: int) -> int:
    """`os.open(path, flags)`, checked before and after against the confinement (if any)."""
    check_path(path)
    fd = os.open(path, flags | os.O_CLOEXEC)
    root = _ROOT.get()
    if root is not None:
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            os.close(fd)
            raise PathOutsideSnapshotDir("cannot tell which file was opened (/proc/self/fd is missing): "
                                         "a confined request is refused") from None
        if not _inside(root, opened):
            os.close(fd)
            raise _refuse(root)
    return fd
