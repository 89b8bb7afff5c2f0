"""Snapshot files into GPU memory: a file registered with CUDA (copies read the page cache
at link speed), sections copied from it and checked on the GPU or the CPU, and files
outside the page cache streamed with O_DIRECT through pinned buffers.

Needs a CUDA device (`thaw.core.gpu.cuda_movers` for the GPU checks).
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

import numpy as np
import torch

from .container import Container
from .errors import FormatError, MoverUnavailable, SchemaError
from .format import align_up
from .gpu import ExpectedChunks, copy_checked
from .movers import DEFAULT_THREADS, movers
from .tensor_data import readonly_tensor


class RegisteredFile:
    """A snapshot file mapped read-only and registered with CUDA, so that GPU copies read
    the page cache directly at link speed. Keep one per file and reuse it across restores."""

    def __init__(self, c: Container) -> None:
        self.container = c
        self._map = c.map(c.file_size)
        self.array = np.frombuffer(self._map, dtype=np.uint8)
        ptr = self.array.ctypes.data
        flags = 8 | 2  # cudaHostRegisterReadOnly | cudaHostRegisterMapped
        err = torch.cuda.cudart().cudaHostRegister(ptr, c.file_size, flags)
        if int(err) != 0:
            raise MoverUnavailable(f"cudaHostRegister of {c.path} failed with CUDA error {int(err)}")
        self._ptr = ptr
        self.host = readonly_tensor(self.array)
        # Unregistered when closed or collected, whichever comes first.
        self._finalizer = weakref.finalize(self, _unregister_host, ptr)

    def section(self, name: str) -> torch.Tensor:
        sec = self.container.section(name)
        return self.host[sec.offset:sec.offset + sec.length]

    def check_padding(self, name: str) -> None:
        """GPU checks see a section's payload only and count its padding as the zeros the
        format requires; this checks those bytes in the file are zeros (on the CPU: under
        4 KiB per section), so a GPU-checked section is checked whole."""
        sec = self.container.section(name)
        tail = self.array[sec.offset + sec.length:sec.offset + sec.padded_length]
        if tail.any():
            raise FormatError(f"section {name!r}: the padding after its payload is not zero bytes "
                              f"(file {self.container.path})")

    def close(self) -> None:
        """Unregisters the mapping from CUDA (idempotent); the mapping goes with the object."""
        self._finalizer()
        self._ptr = 0


class RegisteredFiles:
    """The snapshot files an engine restores from, each mapped and registered with CUDA
    once and kept for later restores of the same file (path, inode, size, modification
    time). The `keep` files used last stay registered (a restore reads at most two: its
    own and the one its weights are referenced from); registering one more releases the
    oldest, so call `get` only between restores (nothing may still read the released one)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._files: dict[tuple, RegisteredFile] = {}

    def get(self, c: Container) -> RegisteredFile:
        from .container import file_key

        key = file_key(c.path)
        reg = self._files.pop(key, None)
        self._files[key] = reg if reg is not None else RegisteredFile(c)  # newest last
        while len(self._files) > self.keep:
            self._files.pop(next(iter(self._files))).close()
        return self._files[key]

    def close(self) -> None:
        """Unregisters every file (idempotent)."""
        files, self._files = self._files, {}
        for reg in files.values():
            reg.close()


def _unregister_host(ptr: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(ptr)


def stream_sections_to_gpu(c: Container, targets: dict[str, torch.Tensor], *, direct: bool = True,
                           staging_bytes: int = 256 * 2**20, threads: int = DEFAULT_THREADS) -> bool:
    """Cold path: reads sections (O_DIRECT where the filesystem allows) into two pinned
    staging buffers, checking CRC32C in the same pass, while the other buffer's bytes are
    copied to the GPU on a side stream. Returns whether O_DIRECT was used throughout."""
    import concurrent.futures

    names = list(targets)
    biggest = max((c.section(n).length for n in names), default=0)
    size = max(staging_bytes, align_up(biggest))
    staging = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    done = [torch.cuda.Event(), torch.cuda.Event()]
    side = torch.cuda.Stream()
    mv = movers()
    used_direct = True

    def read(i: int, name: str) -> bool:
        sec = c.section(name)
        buf = staging[i % 2][:sec.length]
        crcs, direct_used = mv.read_section(c.io_path, sec.offset, buf.numpy(), sec.padded_length,
                                            sec.chunk_size, threads, direct)
        sec.check_crcs(crcs)
        return direct_used

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, 0, names[0]) if names else None
        for i, name in enumerate(names):
            used_direct &= pending.result()
            if i + 1 < len(names):
                done[(i + 1) % 2].synchronize()  # the buffer about to be refilled is free again
                pending = pool.submit(read, i + 1, names[i + 1])
            dst = targets[name].view(-1).view(torch.uint8)
            with torch.cuda.stream(side):
                dst.copy_(staging[i % 2][:dst.numel()], non_blocking=True)
                done[i % 2].record(side)
    side.synchronize()
    return used_direct


def check_sections(reg: "RegisteredFile", names: list[str]) -> None:
    """Checks the named sections' bytes in the mapped file on CPU threads; raises ChecksumError."""
    mv = movers()
    for name in names:
        sec = reg.container.section(name)
        extent = reg.array[sec.offset:sec.offset + sec.padded_length]
        sec.check_crcs(mv.crc32c_chunks(extent, sec.chunk_size, DEFAULT_THREADS))


def copy_sections_to_gpu(reg: RegisteredFile, targets: dict[str, torch.Tensor], *,
                         verify: str = "cpu", stream: Optional[torch.cuda.Stream] = None,
                         timeline: Optional[dict[str, float]] = None) -> None:
    """Copies file sections into GPU tensors of the same byte size.

    verify="cpu": CPU threads checksum the mapped page-cache bytes while the DMA copies run;
    verify="gpu": each section's bytes are checked on the GPU as soon as they land, while
    later sections are still copying (what is checked is what arrived);
    verify="none": no check (for measuring the cost of checking only).
    Raises ChecksumError naming the section if any chunk differs (with verify="gpu", once
    every section has landed). To hand each section on as it lands, through a few slots
    instead of a target per section, see `stream_checked_sections`. `timeline` (verify="gpu",
    for benchmarks): see `_checked_copies`.
    """
    import concurrent.futures

    for name, dst in targets.items():
        n = reg.container.section(name).length
        if dst.numel() * dst.element_size() != n:
            raise SchemaError(f"section {name!r} holds {n} bytes, target {tuple(dst.shape)} differs")
    s = stream or torch.cuda.current_stream()
    if verify == "gpu":
        _copy_checked_on_gpu(reg, targets, s, timeline)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The CPU checksum runs on native threads (GIL released) while the DMA copies go.
        checked = pool.submit(check_sections, reg, list(targets)) if verify == "cpu" else None
        for name, dst in targets.items():
            with torch.cuda.stream(s):
                dst.view(-1).view(torch.uint8).copy_(reg.section(name), non_blocking=True)
        if checked is not None:
            checked.result()
    s.synchronize()


def _copy_checked_on_gpu(reg: RegisteredFile, targets: dict[str, torch.Tensor], s: torch.cuda.Stream,
                         timeline: Optional[dict[str, float]] = None) -> None:
    """Every copy queued at once (each section has its own target), checked on `s` as it
    lands (`_checked_copies`)."""
    if not targets:
        return
    views = [dst.view(-1).view(torch.uint8) for dst in targets.values()]
    _checked_copies(reg, list(targets), lambda i: views[i], len(views), s, timeline=timeline)


def _checked_copies(reg: RegisteredFile, names: list[str], dst: Callable[[int], torch.Tensor], slots: int,
                    s: torch.cuda.Stream, landed: Optional[Callable[[str, torch.Tensor], None]] = None,
                    timeline: Optional[dict[str, float]] = None) -> None:
    """The named sections copied from the registered file into `dst(i)` and checked on `s`
    as they land, through `slots` slots (`thaw.core.gpu.copy_checked`, which says what
    `timeline` gets); each section's padding is checked on the host before its check."""
    secs = [reg.container.section(n) for n in names]
    expected = ExpectedChunks([f"section {n!r}" for n in names], [list(sec.chunk_crcs) for sec in secs],
                              [sec.chunk_size for sec in secs], [sec.padded_length for sec in secs])
    copy_checked(len(names), lambda i: reg.section(names[i]), dst, stream=s, slots=slots, expected=expected,
                 before_check=lambda i: reg.check_padding(names[i]),
                 landed=None if landed is None else lambda i, data: landed(names[i], data), timeline=timeline)


def upload_sections(reg: "RegisteredFile", names: list[str], device: torch.device) -> torch.Tensor:
    """The named sections' bytes back to back in one new device buffer, each checked on the
    GPU as it lands; raises ChecksumError naming the section."""
    lengths = [reg.container.section(n).length for n in names]
    buf = torch.empty(sum(lengths), dtype=torch.uint8, device=device)
    views, at = {}, 0
    for name, n in zip(names, lengths):
        views[name], at = buf[at:at + n], at + n
    copy_sections_to_gpu(reg, views, verify="gpu")
    return buf


def staging_ring(reg: "RegisteredFile", names: list[str], device: torch.device, slots: int = 8,
                 ring: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A device buffer of `slots` slots, each as large as the largest named section (rounded
    up to 4 KiB), for `stream_checked_sections`; `ring` is returned as it is when it
    already fits (reuse one across restores: no allocation per restore)."""
    slot_bytes = align_up(max((reg.container.section(n).length for n in names), default=0))
    slots = max(1, min(slots, len(names)))
    if device.type == "cuda" and device.index is None:  # "cuda" means the current device, as ring.device names it
        device = torch.device("cuda", torch.cuda.current_device())
    if ring is not None and ring.device == device and ring.shape[0] >= slots and ring.shape[1] >= slot_bytes:
        return ring
    return torch.empty((slots, slot_bytes), dtype=torch.uint8, device=device)


def stream_checked_sections(reg: "RegisteredFile", names: list[str], ring: torch.Tensor,
                            landed: Callable[[str, torch.Tensor], None]) -> None:
    """Each named section uploaded from the registered file into the next slot of `ring`
    (`staging_ring`), checked on the GPU as it lands and handed to `landed(name, data)`,
    on the stream current when called: what `landed` queues there must copy `data` out,
    for the slot takes a later section once that work has run. The first slots' copies
    are queued before any check and each later one as a slot is handed back, so the DMA
    engine runs ahead of this thread by the ring's length. Raises ChecksumError naming
    the first bad section once every section has landed (what `landed` wrote must then be
    undone by the caller); returns or raises only once no copy or queued work is running."""
    if not names:
        return
    secs = [reg.container.section(n) for n in names]
    for name, sec in zip(names, secs):
        if sec.length > ring.shape[1]:
            raise SchemaError(f"section {name!r} ({sec.length} bytes) is larger than a staging slot ({ring.shape[1]})")
    slots = ring.shape[0]
    _checked_copies(reg, names, lambda i: ring[i % slots, :secs[i].length], slots,
                    torch.cuda.current_stream(ring.device), landed)
