"""Reading and writing snapshot files at the container level: preamble, header, sections.

Writes are atomic: the file is built under a temporary name in the target directory, the
preamble (with the magic) is written last, then the file is fsynced, renamed into place
and the directory fsynced. A crash at any point leaves either the old file or no file
under the target name, and never a temporary file that passes ``open``.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from . import file_sinks
from .confine import check_path, open_checked
from . import format as fmt
from .device_stage import DeviceStager, on_device
from .errors import FormatError, MoverUnavailable
from .head import parse_head
from .movers import DEFAULT_THREADS, Buffer, movers
from .recycling import take_for_recycling
from .temp_files import is_temp_name, sweep_stale_temps, temp_name

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: fault the pages in up front
VERIFY_WINDOW = 64 * 2**20  # bytes read per call while verifying a section


def as_bytes_view(buf: Buffer) -> Buffer:
    """A 1-D uint8 view the movers accept (numpy, torch CPU tensor, or bytes-like), or of a
    CUDA tensor (written through `device_stage`)."""
    if hasattr(buf, "untyped_storage"):  # torch.Tensor
        import torch

        if buf.device.type not in ("cpu", "cuda"):
            raise FormatError(f"section data must be in CPU or CUDA memory, found a tensor on {buf.device}")
        if not buf.is_contiguous():
            raise FormatError("section data must be a contiguous tensor")
        return buf.reshape(-1).view(torch.uint8) if buf.dim() else buf.reshape(1).view(torch.uint8)
    if isinstance(buf, np.ndarray):
        return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)


def byte_count(view: Buffer) -> int:
    return int(view.numel()) if hasattr(view, "numel") else int(view.nbytes)


def _target_mode(path: Path) -> int:
    """The mode to write with: an existing snapshot's own (it holds prompts and KV: keep it
    as its owner set it), else 0600. Refuses a target that is not a file before writing."""
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot write snapshot {path}: its directory does not exist",
                                str(path.parent))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0o600
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"cannot write snapshot {path}: it exists and is not a regular file")
    return stat.S_IMODE(st.st_mode)


def file_key(path: str | os.PathLike) -> tuple:
    """Which file is at `path` now (real path, inode, size, modification time): a file
    replaced or rewritten there gets a new key, for caches of opened snapshots."""
    check_path(path)
    st = os.stat(path)
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


def _open_direct(tmp: Path, size: int) -> int:
    """`tmp` opened again with O_DIRECT, its `size` bytes allocated first (file systems
    run O_DIRECT writes into allocated space side by side, while writes that allocate
    take turns)."""
    try:
        direct_fd = os.open(tmp, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise MoverUnavailable(f"cannot write {tmp.parent} past the page cache: its file system refuses "
                               "O_DIRECT; snapshot there without direct writes") from None
    try:
        os.posix_fallocate(direct_fd, 0, size)
    except BaseException:
        os.close(direct_fd)
        raise
    return direct_fd


def write_container(
    path: str | os.PathLike,
    meta: dict[str, Any],
    payloads: Iterable[tuple[str, Buffer]],
    *,
    chunk_size: int = fmt.DEFAULT_CHUNK,
    threads: int = DEFAULT_THREADS,
    timings: Optional[dict[str, float]] = None,
    direct: bool = False,
    recycle: Optional[str | os.PathLike] = None,
) -> None:
    """Atomically writes a snapshot file holding `meta` and the named payloads, in order
    (host buffers, or CUDA tensors that stay unchanged until this returns: `device_stage`).
    With `timings`, records the seconds spent checksumming and writing (``write``) and
    flushing to the device and swapping the file into place (``flush``).

    `direct`: the payloads are written with O_DIRECT, past the page cache, into space
    allocated up front, so little is left to flush and the file is not cached afterwards (a
    restore of it then streams it from the disk: `residency`); for snapshots kept for
    later rather than forked from at once. A file system that refuses O_DIRECT raises
    `MoverUnavailable` before anything is written.

    `recycle`: a retired snapshot file in the same directory whose space is reused: it is
    renamed to the temporary name (so it is gone under its own name at once) and its
    page-cache pages are overwritten instead of fresh ones allocated, the kernel's slow part
    of a buffered write. It is first cut or grown to the new size (the growth allocated), then,
    while most of its pages are cached, mapped and its sections copied in by several threads
    at once (`file_sinks`), else written as a fresh file is. Not with `direct`."""
    t0 = time.perf_counter()
    mv = movers()
    path = Path(path)
    views = [(name, as_bytes_view(buf)) for name, buf in payloads]
    placeholder = fmt.plan_sections([(n, byte_count(v)) for n, v in views], 0, chunk_size)
    header_len = len(fmt.encode_header({"meta": meta, "sections": [s.to_json() for s in placeholder]}))
    data_start = fmt.PREAMBLE_SIZE + header_len
    planned = fmt.plan_sections([(n, byte_count(v)) for n, v in views], data_start, chunk_size)

    mode = _target_mode(path)
    sweep_stale_temps(path)
    tmp = path.with_name(temp_name(path.name))
    if recycle is not None and direct:
        raise FormatError("a recycled file is overwritten in the page cache; direct writes bypass it: pick one")
    if recycle is not None:
        fd = take_for_recycling(Path(recycle), path, tmp, meta)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while writing: a sweeper elsewhere leaves the file (`temp_files`)
    direct_fd = -1
    device_views = [v for _, v in views if on_device(v)]
    stager, mapped = None, None
    file_size = planned[-1].offset + planned[-1].padded_length if planned else data_start
    try:
        os.fchmod(fd, mode)  # exactly: the umask does not widen or narrow a kept mode
        if direct:
            direct_fd = _open_direct(tmp, file_size)
        if recycle is not None:
            mapped = file_sinks.recycled_sink(fd, tmp, file_size, chunk_size, threads)
        sink: file_sinks.SectionSink = mapped or (lambda offset, view, padded_length: mv.write_section(
            fd, offset, view, padded_length, chunk_size, threads, direct_fd))
        stager = DeviceStager(device_views, chunk_size) if device_views else None
        written = []
        for section, (_, view) in zip(planned, views):
            if stager is not None and on_device(view):
                crcs = stager.write(sink, section.offset, section.padded_length)
            else:
                crcs = sink(section.offset, view, section.padded_length)
            written.append(fmt.Section(section.name, section.offset, section.length, chunk_size, tuple(crcs)))
        if stager is not None:
            stager.close()
        if mapped is not None:
            mapped.close()
            mapped = None
        if direct_fd >= 0:
            os.close(direct_fd)
            direct_fd = -1
        header = fmt.encode_header({"meta": meta, "sections": [s.to_json() for s in written]})
        if len(header) != header_len:
            raise FormatError("internal: header length changed between planning and writing")
        os.pwrite(fd, header, fmt.PREAMBLE_SIZE)
        os.pwrite(fd, fmt.pack_preamble(header_len, mv.crc32c(header), mv.crc32c), 0)
        t1 = time.perf_counter()
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException as exc:
        if stager is not None:
            stager.close()  # no staging buffer is freed under a copy in flight
        if mapped is not None:
            mapped.close()
        if direct_fd >= 0:
            os.close(direct_fd)
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, f"writing snapshot {path}: {os.strerror(exc.errno)} ({exc.strerror or exc})",
                          str(path)) from exc
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if timings is not None:
        timings["write"] = t1 - t0
        timings["flush"] = time.perf_counter() - t1


class Container:
    """An open snapshot file whose preamble, header and section table have been validated.

    Opening reads only the preamble and header; section bytes are read on demand, and
    every read checks the CRC32C of each chunk it touches before returning. `is_local`:
    a file that can be mapped (URLs open as `object_store.ObjectContainer`).
    """

    is_local = True

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        if is_temp_name(os.path.basename(self.path)):
            raise FormatError(f"{self.path} is a snapshot writer's temporary file (unfinished, or left by "
                              "a writer that crashed), not a snapshot")
        check_path(self.path)  # a server's request: nothing outside its directory, not even a stat
        st = os.stat(self.path)
        if stat.S_ISDIR(st.st_mode):
            raise FormatError(f"{self.path} is a directory, not a snapshot file")
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{self.path} is not a regular file (a FIFO, socket or device), not a snapshot")
        # The file is held open from here on: every later read, map and check goes to this
        # inode, even after another process atomically replaces the file at `path`. Under a
        # server's confinement (`confine`), the file opened is checked, not only its name.
        self._fd = open_checked(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._closer = weakref.finalize(self, os.close, self._fd)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            raise FormatError(f"{self.path} was replaced by something other than a regular file while opened")
        try:  # shared with other readers; `_take_for_recycling` waits for none of them and refuses
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FormatError(f"{self.path} is being recycled into another snapshot right now") from None
        # The native readers open by path (O_DIRECT needs its own open): /proc/self/fd/N
        # re-opens this same inode. Where /proc is missing, reads follow the path.
        self.io_path = f"/proc/self/fd/{self._fd}" if os.path.isdir("/proc/self/fd") else self.path
        self.file_size = os.fstat(self._fd).st_size
        self.meta, self.sections, self.data_start = parse_head(
            lambda offset, length: os.pread(self._fd, length, offset), self.file_size)
        self._maps: dict[str, np.ndarray] = {}  # section name -> view of its one mapping
        self.checked: set[str] = set()  # sections whose every chunk's CRC has been checked

    def fileno(self) -> int:
        """The descriptor this Container holds the snapshot file open with."""
        return self._fd

    def close(self) -> None:
        """Closes the file (idempotent); mappings already made stay valid, and so does the
        shared lock (see `map`)."""
        self._closer()

    def map(self, length: int, offset: int = 0, extra_flags: int = 0) -> mmap.mmap:
        """A read-only shared mapping of the file. While it lives, a descriptor sharing this
        Container's lock stays open, so the file is not recycled (cut shorter) under it."""
        m = mmap.mmap(self._fd, length, flags=mmap.MAP_SHARED | extra_flags, prot=mmap.PROT_READ, offset=offset)
        weakref.finalize(m, os.close, os.dup(self._fd))  # flock is per open file: the dup holds it
        return m

    def section(self, name: str) -> fmt.Section:
        try:
            return self.sections[name]
        except KeyError:
            raise FormatError(f"section {name!r} is missing from {self.path}") from None

    def _read_window(self, sec: fmt.Section, first_chunk: int, dest: Buffer, verify: bool,
                     threads: int, direct: bool) -> None:
        start = first_chunk * sec.chunk_size
        view = as_bytes_view(dest)
        data_len = byte_count(view)
        padded = fmt.align_up(data_len) if start + data_len == sec.length else data_len
        crcs, _ = movers().read_section(self.io_path, sec.offset + start, view, padded,
                                        sec.chunk_size, threads, direct)
        if verify:
            sec.check_crcs(crcs, first_chunk)
            if first_chunk == 0 and padded == sec.padded_length:
                self.checked.add(sec.name)

    def read_into(self, name: str, dest: Buffer, *, verify: bool = True,
                  threads: int = DEFAULT_THREADS, direct: bool = False) -> None:
        """Fills `dest` (exactly the section's length) with the section's payload, checking
        every chunk. On a ChecksumError, `dest` holds the unverified bytes read so far: it
        must not be used (verify-then-copy costs a second pass, so it is not done here)."""
        sec = self.section(name)
        n = byte_count(as_bytes_view(dest))
        if n != sec.length:
            raise FormatError(f"section {name!r} holds {sec.length} bytes; the buffer has {n}")
        self._read_window(sec, 0, dest, verify, threads, direct)

    def map_section(self, name: str) -> np.ndarray:
        """The section's payload as a read-only view of the page cache (no copy), after the
        CRC32C of every chunk of its padded extent has been checked (on every call: the
        file's pages are checked, not trusted).

        Each section is mapped once per Container and populated up front; the mapping
        stays valid while this Container lives. Works on kernels with any page size: the
        mapping starts at the allocation granularity below the section."""
        sec = self.section(name)
        if sec.padded_length == 0:
            return np.empty(0, dtype=np.uint8)
        view = self._maps.get(name)
        if view is None:
            lead = sec.offset % mmap.ALLOCATIONGRANULARITY
            # Read-only: a writable private mapping would be populated by copying every page.
            m = self.map(lead + sec.padded_length, sec.offset - lead, _MAP_POPULATE)
            view = np.frombuffer(m, dtype=np.uint8)[lead:]
            self._maps[name] = view
        sec.check_crcs(movers().crc32c_chunks(view, sec.chunk_size, DEFAULT_THREADS))
        self.checked.add(name)
        return view[:sec.length]

    @property
    def num_mappings(self) -> int:
        """Sections mapped so far (one mapping each)."""
        return len(self._maps)

    def read(self, name: str, *, verify: bool = True) -> np.ndarray:
        sec = self.section(name)
        out = np.empty(sec.length, dtype=np.uint8)
        self.read_into(name, out, verify=verify)
        return out

    def verify(self, *, progress: ProgressFn | None = None, threads: int = DEFAULT_THREADS) -> None:
        """Checks the CRC32C of every byte of every section; raises ChecksumError naming the first bad chunk."""
        mv = movers()
        total = sum(s.padded_length for s in self.sections.values())
        done = 0
        for sec in self.sections.values():
            window_chunks = max(1, VERIFY_WINDOW // sec.chunk_size)
            for first in range(0, sec.num_chunks, window_chunks):
                start = first * sec.chunk_size
                length = min(sec.padded_length - start, window_chunks * sec.chunk_size)
                sec.check_crcs(mv.check_section(self.io_path, sec.offset + start, length,
                                                sec.chunk_size, threads), first)
                done += length
                if progress:
                    progress(done, total)
            self.checked.add(sec.name)
