"""Where `write_container` puts a snapshot's sections: write calls, or a shared mapping of
the file whose pages the writer's threads copy into side by side.

Write calls into one file take turns on its lock, so they fill the page cache at about one
thread's rate. A mapping lets every writer thread copy at once, but a write fault on a page
that is not cached and not newly allocated reads it from the disk first, and a fault on a
hole that the disk cannot fill is a SIGBUS rather than an error; so a file is mapped only
when its space is allocated first and its pages are either cached (a recycled file) or new
(a fresh file, whose allocated blocks read as zeros without touching the disk).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .movers import Buffer, movers
from .residency import COLD_BELOW, resident_fraction

SectionSink = Callable[[int, Buffer, int], list]  # (file offset, host bytes, padded length) -> chunk CRCs


class MappedFile:
    """A file's bytes, mapped shared: sections are copied into its page cache by
    `copy_section`'s threads, side by side. The caller sizes the file to `size` with its
    blocks allocated first, so that no copy faults on a hole (a full disk then fails the
    allocation with an error, not a SIGBUS). An I/O error on a mapped page still ends the
    process with SIGBUS, where a write call would return an error; the file is then left a
    temporary one."""

    def __init__(self, fd: int, size: int, chunk_size: int, threads: int) -> None:
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._bytes: Optional[np.ndarray] = np.frombuffer(self._map, dtype=np.uint8)
        self._chunk_size, self._threads = chunk_size, threads

    def __call__(self, offset: int, view: Buffer, padded_length: int) -> list:
        assert self._bytes is not None, "written after close"
        return movers().copy_section(self._bytes[offset:offset + padded_length], view, padded_length,
                                     self._chunk_size, self._threads)

    def close(self) -> None:
        self._bytes = None  # the mapping closes only once no view of it is left
        self._map.close()


_LIBC = ctypes.CDLL(None, use_errno=True)


def allocate(fd: int, offset: int, length: int) -> bool:
    """Allocates the file's blocks for [offset, offset + length) with fallocate(2), growing
    it; False where the file system does not allocate space up front (glibc's
    posix_fallocate would write zeros there instead). A full disk raises OSError(ENOSPC)."""
    fallocate = getattr(_LIBC, "fallocate", None)
    if fallocate is None:
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, 0, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, f"allocating {length} bytes for the snapshot: {os.strerror(err)}")


def fresh_sink(fd: int, size: int, chunk_size: int, threads: int) -> Optional[MappedFile]:
    """A new, empty file `fd` (open for reading and writing) allocated to `size` bytes and
    mapped; None where the file system cannot allocate it up front or `size` is 0 (then it
    is written by write calls)."""
    if size == 0 or not allocate(fd, 0, size):
        return None
    return MappedFile(fd, size, chunk_size, threads)


def recycled_sink(fd: int, tmp: Path, size: int, chunk_size: int, threads: int) -> Optional[MappedFile]:
    """The retired file `fd` (at `tmp`) cut or grown to `size` bytes, its blocks allocated,
    and mapped while most of its pages are still cached; None when they are not (then it is
    written by write calls, which need not read a page they replace)."""
    cached = resident_fraction(tmp) >= COLD_BELOW
    old_size = os.fstat(fd).st_size
    os.ftruncate(fd, size)
    if size > old_size:
        os.posix_fallocate(fd, old_size, size - old_size)
    return MappedFile(fd, size, chunk_size, threads) if cached and size > 0 else None
