"""Pre-faulting host memory so the first write into it runs at memory speed.

An engine's CPU KV buffer is usually allocated but never touched until used; the first
write into each page then costs a page fault. `populate_for_write` asks the kernel to
back the range now (MADV_POPULATE_WRITE, Linux 5.14+) without changing its contents.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import torch

MADV_POPULATE_WRITE = 23
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def populate_for_write(storage: torch.UntypedStorage) -> str:
    """Backs a CPU storage's pages; returns "populated" or why it could not ("unavailable: ...")."""
    if storage.device.type != "cpu":
        return "not host memory"
    return populate_range(storage.data_ptr(), storage.nbytes())


def populate_range(address: int, nbytes: int) -> str:
    """Backs the pages spanning `nbytes` host bytes at `address` (any mapping, a shared file
    mapping included); returns "populated" or why it could not ("unavailable: ...")."""
    page = mmap.PAGESIZE
    start = address // page * page
    end = -(-(address + nbytes) // page) * page
    if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_POPULATE_WRITE) != 0:
        err = ctypes.get_errno()
        return f"unavailable: madvise(MADV_POPULATE_WRITE) failed with {os.strerror(err)}"
    return "populated"
