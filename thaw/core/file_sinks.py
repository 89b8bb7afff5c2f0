"""Where `write_container` puts a recycled snapshot's sections: a shared mapping of the
retired file whose cached pages the writer's threads copy into side by side, or write calls.

Write calls into one file take turns on its lock, so they fill the page cache at about one
thread's rate. A mapping lets every writer thread copy at once, but a write fault on a page
that is not cached reads it from the disk first, and a fault on a hole that the disk cannot
fill is a SIGBUS rather than an error; so a file is mapped only when its space is allocated
first and most of its pages are cached. A new file is written by write calls: mapped the
same way, its space allocated up front, it took 2.2x as long on the GPU box, in a run where
by all signs that box's page cache did not keep the files it had just written
(`benchmarks/receipts/recycled_write-20261206T084038Z-8b6e5bb5.json`, commit 8b6e5bb).
"""

from __future__ import annotations

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
