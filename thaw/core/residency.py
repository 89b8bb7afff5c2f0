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

PathLike = Union[str, os.PathLike]

# A file with less than this share of its pages in the page cache is read from the disk
# with O_DIRECT (a mapping would fault most of it in a page at a time).
COLD_BELOW = 0.9

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int


def resident_fraction(path: PathLike) -> float:
    """The share of `path`'s pages in the page cache now, 0.0 to 1.0 (1.0 for an empty
    file). Reads no data: the file is mapped and asked with mincore(2)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 1.0
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mapped:
            view = np.frombuffer(mapped, dtype=np.uint8)
            pages = -(-size // mmap.PAGESIZE)
            vec = np.zeros(pages, dtype=np.uint8)
            if _libc.mincore(view.ctypes.data, size, vec.ctypes.data) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mincore of {os.fspath(path)}: {os.strerror(err)}")
            resident = int(np.count_nonzero(vec & 1))
            del view
        return resident / pages
    finally:
        os.close(fd)


def is_cold(path: PathLike) -> bool:
    """Whether a restore should read `path` from the disk (O_DIRECT) instead of mapping it."""
    return resident_fraction(path) < COLD_BELOW


def evict(path: PathLike) -> float:
    """Writes `path`'s dirty pages to disk and asks the kernel to drop its cached pages
    (no privileges needed; a file system without a backing disk, such as tmpfs, keeps
    them). Returns the share still resident afterwards."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)
