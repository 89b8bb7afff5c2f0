"""How much of a file the page cache holds, and dropping it from there.

A restore reads a snapshot one of two ways: through a mapping of the page cache (registered
with CUDA: copies at link speed when the file is cached, one page fault after another when
it is not), or with O_DIRECT reads, many in flight, straight from the disk. `resident_fraction`
tells which one fits a file; `evict` makes a file cold (benchmarks and tests).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Union

import numpy as np

from .confine import open_checked

PathLike = Union[str, os.PathLike]

# A file with less than this share of its pages in the page cache is read from the disk
# with O_DIRECT (a mapping would fault most of it in a page at a time).
COLD_BELOW = 0.9

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int


def resident_fraction(path: PathLike, *, windows: int = 64, window_pages: int = 16) -> float:
    """The share of `path`'s pages in the page cache now, 0.0 to 1.0 (1.0 for an empty
    file). Reads no data: the file is mapped and asked with mincore(2). A file of more than
    `windows` x `window_pages` pages is sampled in that many evenly spaced windows (the
    kernel looks up every page asked about: all of a 16 GB file costs it about 0.15 s)."""
    fd = open_checked(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 1.0
        pages = -(-size // mmap.PAGESIZE)
        if pages <= windows * window_pages:
            starts, span = [0], pages
        else:
            stride = pages // windows
            starts, span = [i * stride for i in range(windows)], window_pages
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mapped:
            base = np.frombuffer(mapped, dtype=np.uint8)
            vec = np.zeros(span, dtype=np.uint8)
            resident = asked = 0
            for start in starts:
                n = min(span, pages - start)
                length = min(n * mmap.PAGESIZE, size - start * mmap.PAGESIZE)
                if _libc.mincore(base.ctypes.data + start * mmap.PAGESIZE, length, vec.ctypes.data) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"mincore of {os.fspath(path)}: {os.strerror(err)}")
                resident += int(np.count_nonzero(vec[:n] & 1))
                asked += n
            del base
        return resident / asked
    finally:
        os.close(fd)


def is_cold(path: PathLike) -> bool:
    """Whether a restore should read `path` from the disk (O_DIRECT) instead of mapping it."""
    return resident_fraction(path) < COLD_BELOW


def evict(path: PathLike) -> float:
    """Writes `path`'s dirty pages to disk and asks the kernel to drop its cached pages
    (no privileges needed; a file system without a backing disk, such as tmpfs, keeps
    them). Returns the share still resident afterwards."""
    fd = open_checked(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)
