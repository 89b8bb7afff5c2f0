"""The Python face of the data movers: CRC32C and section I/O.

Two implementations exist: ``native`` (the ``thaw._native`` extension: hardware CRC32C,
multi-threaded pipelined reads and writes, O_DIRECT) and ``python`` (portable and slow,
for environments where the extension cannot be built). The native one is used unless the
pure-Python one is selected explicitly, with ``THAW_MOVERS=python`` or
:func:`select_movers`; selecting it is announced with a warning. If the native extension
is missing and nothing was selected, :class:`MoverUnavailable` is raised: thaw never falls
back silently.
"""

from __future__ import annotations

import importlib
import mmap
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from . import crc as pycrc
from .errors import MoverUnavailable

Buffer = Any  # numpy uint8 array, 1-D contiguous CPU torch uint8 tensor, bytes-like

DEFAULT_THREADS = max(1, min(16, os.cpu_count() or 1))


@dataclass(frozen=True)
class Movers:
    """One implementation of the movers. All functions release the GIL in the native one."""

    name: str
    crc32c: Callable[..., int]
    crc32c_combine: Callable[[int, int, int], int]
    crc32c_parallel: Callable[[Buffer, int, int], int]
    crc32c_chunks: Callable[[Buffer, int, int], list[int]]
    read_section: Callable[..., tuple[list[int], bool]]
    check_section: Callable[..., list[int]]
    write_section: Callable[..., list[int]]
    copy_section: Callable[..., list[int]]
    crc_backend: str


def _native_movers() -> Movers:
    try:
        native = importlib.import_module("thaw._native")
    except ImportError as exc:
        raise MoverUnavailable(
            f"the native extension thaw._native could not be imported ({exc}); reinstall "
            "thaw with `pip install .` on a machine with a C++ compiler, or select the "
            "pure-Python movers explicitly with THAW_MOVERS=python"
        ) from exc
    return Movers(
        name="native",
        crc32c=native.crc32c,
        crc32c_combine=native.crc32c_combine,
        crc32c_parallel=native.crc32c_parallel,
        crc32c_chunks=native.crc32c_chunks,
        read_section=native.read_section,
        check_section=native.check_section,
        write_section=native.write_section,
        copy_section=native.copy_section,
        crc_backend=native.crc32c_backend(),
    )


def _byte_view(buf: Buffer) -> memoryview:
    """A flat byte memoryview of numpy arrays, CPU torch tensors and bytes-likes."""
    if hasattr(buf, "numpy"):  # torch.Tensor: shares memory through numpy
        buf = buf.numpy()
    return memoryview(buf).cast("B")


def _py_crc(data: Buffer, value: int = 0) -> int:
    return pycrc.crc32c(_byte_view(data), value)


def _py_crc_parallel(data: Buffer, shards: int, threads: int) -> int:
    view = _byte_view(data)
    shards = max(1, shards)
    step = -(-len(view) // shards) or 1
    total = 0
    for start in range(0, len(view), step):
        piece = view[start : start + step]
        total = pycrc.crc32c_combine(total, pycrc.crc32c(piece), len(piece))
    return total


def _py_crc_chunks(data: Buffer, chunk_size: int, threads: int) -> list[int]:
    view = _byte_view(data)
    return [pycrc.crc32c(view[i:i + chunk_size]) for i in range(0, len(view), chunk_size)]


def _chunks(padded_len: int, chunk_size: int):
    for begin in range(0, padded_len, chunk_size):
        yield begin, min(padded_len, begin + chunk_size)


def _check_extent(data_len: int, padded_len: int, chunk_size: int) -> None:
    if chunk_size <= 0 or chunk_size % 4096:
        raise ValueError("chunk_size must be a positive multiple of 4096")
    if padded_len < data_len or padded_len - data_len >= 4096 or padded_len % 4096:
        raise ValueError("padded_len must be data_len rounded up to 4096")


def _py_read_section(path: str, offset: int, dest: Buffer, padded_len: int,
                     chunk_size: int, threads: int, direct: bool) -> tuple[list[int], bool]:
    out = _byte_view(dest)
    _check_extent(len(out), padded_len, chunk_size)
    crcs = []
    with open(path, "rb", buffering=0) as f:
        for begin, end in _chunks(padded_len, chunk_size):
            data_end = min(end, max(begin, len(out)))
            f.seek(offset + begin)
            crc = 0
            if data_end > begin:
                if f.readinto(out[begin:data_end]) != data_end - begin:
                    raise OSError(0, f"unexpected end of file at offset {offset + begin}")
                crc = pycrc.crc32c(out[begin:data_end])
            if end > data_end:
                pad = f.read(end - data_end)
                if len(pad) != end - data_end:
                    raise OSError(0, f"unexpected end of file at offset {offset + data_end}")
                crc = pycrc.crc32c(pad, crc)
            crcs.append(crc)
    return crcs, False


def _py_check_section(path: str, offset: int, padded_len: int, chunk_size: int,
                      threads: int) -> list[int]:
    _check_extent(padded_len, padded_len, chunk_size)
    crcs = []
    with open(path, "rb", buffering=0) as f:
        for begin, end in _chunks(padded_len, chunk_size):
            f.seek(offset + begin)
            piece = f.read(end - begin)
            if len(piece) != end - begin:
                raise OSError(0, f"unexpected end of file at offset {offset + begin}")
            crcs.append(pycrc.crc32c(piece))
    return crcs


def _py_write_section(fd: int, offset: int, src: Buffer, padded_len: int, chunk_size: int,
                      threads: int, direct_fd: int = -1) -> list[int]:
    data = _byte_view(src)
    _check_extent(len(data), padded_len, chunk_size)
    if direct_fd >= 0 and offset % 4096:
        raise ValueError("section offset must be 4096-aligned")
    aligned = mmap.mmap(-1, chunk_size) if direct_fd >= 0 else None  # page-aligned, as O_DIRECT needs
    crcs = []
    for begin, end in _chunks(padded_len, chunk_size):
        data_end = min(end, max(begin, len(data)))
        piece = bytes(data[begin:data_end]) + bytes(end - data_end)
        if aligned is not None:
            aligned[:len(piece)] = piece
            out, target = memoryview(aligned)[:len(piece)], direct_fd
        else:
            out, target = memoryview(piece), fd
        written = 0
        while written < len(piece):
            written += os.pwrite(target, out[written:], offset + begin + written)
        del out
        crcs.append(pycrc.crc32c(piece))
    if aligned is not None:
        aligned.close()
    return crcs


def _py_copy_section(dest: Buffer, src: Buffer, padded_len: int, chunk_size: int, threads: int) -> list[int]:
    out, data = _byte_view(dest), _byte_view(src)
    _check_extent(len(data), padded_len, chunk_size)
    if len(out) < padded_len:
        raise ValueError(f"copy_section: dest holds {len(out)} bytes, fewer than padded_len {padded_len}")
    crcs = []
    for begin, end in _chunks(padded_len, chunk_size):
        data_end = min(end, max(begin, len(data)))
        out[begin:data_end] = data[begin:data_end]
        out[data_end:end] = bytes(end - data_end)
        crcs.append(pycrc.crc32c(out[begin:end]))
    return crcs


def _python_movers() -> Movers:
    return Movers(
        name="python",
        crc32c=_py_crc,
        crc32c_combine=pycrc.crc32c_combine,
        crc32c_parallel=_py_crc_parallel,
        crc32c_chunks=_py_crc_chunks,
        read_section=_py_read_section,
        check_section=_py_check_section,
        write_section=_py_write_section,
        copy_section=_py_copy_section,
        crc_backend="python",
    )


_FACTORIES = {"native": _native_movers, "python": _python_movers}
_selected: Movers | None = None


def select_movers(name: str) -> Movers:
    """Selects the movers by name ('native' or 'python') for this process."""
    global _selected
    if name not in _FACTORIES:
        raise MoverUnavailable(f"unknown movers {name!r}; choose one of {sorted(_FACTORIES)}")
    movers = _FACTORIES[name]()
    if name == "python":
        warnings.warn(
            "thaw: using the pure-Python movers (selected explicitly); CRC32C and I/O run "
            "orders of magnitude slower than the native extension",
            RuntimeWarning,
            stacklevel=2,
        )
    _selected = movers
    return movers


def movers() -> Movers:
    """The movers in use: the explicit selection, else THAW_MOVERS, else native."""
    if _selected is None:
        return select_movers(os.environ.get("THAW_MOVERS", "native"))
    return _selected
