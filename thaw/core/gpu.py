"""GPU movers: KV pages between paged GPU tensors and packed buffers, and CRC32C of device
bytes (checks queued without waiting). Snapshot files into GPU memory: `gpu_files`.

Needs the thaw._cuda extension (built where a CUDA toolkit was found) and a CUDA device;
`cuda_movers()` raises MoverUnavailable saying which is missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from .errors import ChecksumError, MoverUnavailable, SchemaError
from .format import align_up
from .movers import movers


def cuda_movers() -> Any:
    try:
        mod = importlib.import_module("thaw._cuda")
    except ImportError as exc:
        raise MoverUnavailable(f"thaw was built without CUDA movers ({exc}); reinstall on a "
                               "machine with a CUDA toolkit") from exc
    if not torch.cuda.is_available() or mod.device_count() == 0:
        raise MoverUnavailable("no CUDA device is available")
    return mod


@dataclass(frozen=True)
class PageSegments:
    """Where one page (block) of a paged tensor lies: `segment_offsets` (bytes from the
    block's start) of runs of `segment_bytes` contiguous bytes; blocks `block_stride` apart."""

    block_stride: int
    segment_offsets: tuple[int, ...]
    segment_bytes: int

    @property
    def page_bytes(self) -> int:
        return len(self.segment_offsets) * self.segment_bytes


def page_segments(t: torch.Tensor, block_dim: int = 0) -> PageSegments:
    """Derives the segments of a paged tensor from its real strides.

    The dims after `block_dim` must cover one dense run of memory, in any order (e.g. a
    logically [heads, tokens, 2*head_dim] block stored token-major is one segment, copied
    in its physical order); dims before it enumerate segments (e.g. K and V planes).
    """
    item = t.element_size()
    inner = sorted((stride, size) for size, stride in zip(t.shape[block_dim + 1:], t.stride()[block_dim + 1:])
                   if size != 1)
    expected = 1
    for stride, size in inner:
        if stride != expected:
            raise SchemaError(f"paged tensor {tuple(t.shape)} with strides {t.stride()}: the dims "
                              f"after block dim {block_dim} are not one dense run of memory")
        expected *= size
    offsets = [0]
    for size, stride in zip(t.shape[:block_dim], t.stride()[:block_dim]):
        offsets = [o + i * stride * item for o in offsets for i in range(size)]
    return PageSegments(t.stride(block_dim) * item, tuple(offsets), expected * item)


class PagePlan:
    """Device-side arrays describing pages of several same-shaped layers; reusable."""

    def __init__(self, layers: list[torch.Tensor], block_ids: torch.Tensor, block_dim: int = 0) -> None:
        if not layers:
            raise SchemaError("no layers to move")
        dev = layers[0].device
        self.segments = page_segments(layers[0], block_dim)
        for t in layers[1:]:
            if page_segments(t, block_dim) != self.segments or t.device != dev:
                raise SchemaError("all layers must share shape, strides and device")
        ids = block_ids.to(device=dev, dtype=torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= layers[0].shape[block_dim]):
            raise SchemaError(f"block ids outside [0, {layers[0].shape[block_dim]})")
        if ids.numel() != torch.unique(ids).numel():
            raise SchemaError("block ids must not repeat (a scatter would race)")
        self.layers = layers
        self.block_ids = ids
        self.bases = torch.tensor([t.data_ptr() for t in layers], dtype=torch.int64, device=dev)
        self.offsets = torch.tensor(self.segments.segment_offsets, dtype=torch.int64, device=dev)

    @property
    def packed_bytes(self) -> int:
        return len(self.layers) * self.block_ids.numel() * self.segments.page_bytes

    def _args(self, packed: torch.Tensor, stream: Optional[torch.cuda.Stream]) -> tuple:
        if packed.numel() * packed.element_size() < self.packed_bytes or not packed.is_contiguous():
            raise SchemaError(f"packed buffer must be contiguous and hold {self.packed_bytes} bytes")
        s = stream or torch.cuda.current_stream(self.layers[0].device)
        return (self.bases.data_ptr(), self.block_ids.data_ptr(), self.offsets.data_ptr(),
                len(self.layers), self.block_ids.numel(), len(self.segments.segment_offsets),
                self.segments.block_stride, self.segments.segment_bytes, packed.data_ptr(), s.cuda_stream)

    def gather(self, packed: torch.Tensor, stream: Optional[torch.cuda.Stream] = None) -> None:
        """packed[layer][page] <- pages, one kernel launch (packed: device or mapped pinned host)."""
        cuda_movers().gather_pages(*self._args(packed, stream))

    def scatter(self, packed: torch.Tensor, stream: Optional[torch.cuda.Stream] = None,
                gate: Optional[torch.Tensor] = None) -> None:
        """pages <- packed[layer][page], one kernel launch; with `gate` (a CUDA int32 scalar
        written by DeviceVerifier) nothing is written unless the gate is still 1."""
        cuda_movers().scatter_pages(*self._args(packed, stream), gate.data_ptr() if gate is not None else 0)


class DeviceVerifier:
    """CRC32C checks of several items' device bytes against a file's chunk CRCs, queued
    without waiting.

    Made before the bytes land, with every item's name and expected chunk CRCs: these go up
    to the device in one pinned transfer on `upload_stream`, and every item's result slots
    and its int32 flag (1 while the bytes match) are allocated once, on `stream`. Queue the
    upload ahead of the bulk copies it checks, or behind the first one, on the copy stream:
    a small transfer queued after them waits in the copy engine behind every one of them,
    and so would every check. `check(i, ...)` queues item i's check on `stream` (it must
    run after the upload: on the copy stream's later events, or after a wait on it) and
    returns item i's flag, which can gate a later kernel on that stream
    (PagePlan.scatter). `raise_if_failed` waits for `stream` and raises ChecksumError
    naming the first bad item and chunk."""

    def __init__(self, names: list[str], expected: list[list[int]], device: torch.device, *,
                 stream: torch.cuda.Stream, upload_stream: Optional[torch.cuda.Stream] = None) -> None:
        self.names, self.expected, self.stream = names, expected, stream
        self._at = np.cumsum([0] + [len(crcs) for crcs in expected]).tolist()
        flat = np.array([c for crcs in expected for c in crcs], dtype=np.uint32).view(np.int32)
        with torch.cuda.stream(upload_stream or stream):
            self._want = torch.from_numpy(flat).pin_memory().to(device, non_blocking=True)
        with torch.cuda.stream(stream):
            self._got = torch.empty(len(flat), dtype=torch.int32, device=device)
            self._flags = torch.ones(len(expected), dtype=torch.int32, device=device)
        if upload_stream is not None and upload_stream != stream:
            self._want.record_stream(stream)  # read there by the checks
        self._scratch: Optional[torch.Tensor] = None  # the CRC kernels' piece words, grown as needed

    def check(self, i: int, data: torch.Tensor, chunk_size: int, padded_len: Optional[int] = None) -> torch.Tensor:
        """Queues item i's check of `data` (contiguous, on the device) on the stream."""
        n = data.numel() * data.element_size()
        got, want = self._got[self._at[i]:self._at[i + 1]], self._want[self._at[i]:self._at[i + 1]]
        flag = self._flags[i]
        padded = padded_len or align_up(n)
        mod = cuda_movers()
        need = mod.crc32c_scratch_bytes(padded)
        if self._scratch is None or self._scratch.numel() < need:  # checks run in order on one stream
            with torch.cuda.stream(self.stream):
                self._scratch = torch.empty(need, dtype=torch.uint8, device=data.device)
        mod.crc32c_chunks_async(data.data_ptr(), n, padded, chunk_size, self._scratch.data_ptr(), need,
                                got.data_ptr(), want.data_ptr(), flag.data_ptr(), self.stream.cuda_stream)
        return flag

    def raise_if_failed(self) -> None:
        """Waits for every queued check; raises ChecksumError naming the first bad item."""
        self.stream.synchronize()
        flags = self._flags.cpu().tolist()  # one read of every flag
        bad = next((i for i, ok in enumerate(flags) if not ok), None)
        if bad is None:
            return
        actual = self._got[self._at[bad]:self._at[bad + 1]].cpu().numpy().view(np.uint32).tolist()
        expected = self.expected[bad]
        k = next(k for k, (a, e) in enumerate(zip(actual, expected)) if a != e)
        raise ChecksumError(f"{self.names[bad]} chunk {k} (in GPU memory)", expected[k], actual[k])


@dataclass(frozen=True)
class ExpectedChunks:
    """What `copy_checked` checks item i against: its chunk CRCs from the file, the chunk
    size they were taken with and its padded length (None: its length rounded up to 4 KiB);
    `names` label the items in errors."""

    names: list[str]
    crcs: list[list[int]]
    chunk_sizes: list[int]
    padded: list[Optional[int]]


def copy_checked(count: int, source: Callable[[int], torch.Tensor], target: Callable[[int], torch.Tensor], *,
                 stream: torch.cuda.Stream, slots: Optional[int] = None,
                 expected: Optional[ExpectedChunks] = None,
                 before_check: Optional[Callable[[int], None]] = None,
                 landed: Optional[Callable[[int, torch.Tensor], None]] = None,
                 timeline: Optional[dict[str, Any]] = None) -> None:
    """Item i copied from `source(i)` (host bytes, pinned or CUDA-registered) into
    `target(i)` (uint8 on the device, its length) on a side stream; the first `slots`
    copies (default: all) are queued before any check, and copy i + slots only once what
    was queued on `stream` for item i has run, so `target(i + slots)` may be `target(i)`'s
    memory again. On `stream`, item i waits for its copy, is checked against `expected`
    (whose CRCs go up in one transfer behind the first copy, ahead of the rest) and is
    handed to `landed(i, data)`; `before_check(i)` runs on the host first (it may raise).
    Raises ChecksumError naming the first bad item once every item has landed; returns or
    raises only once no copy or work queued on `stream` is running, so nothing still
    writes the targets when the caller sees an error. `timeline` (for benchmarks) gets the
    device's milliseconds from the start to the last item landed (`last_landed_ms`) and to
    the last item's work on `stream` done (`checked_ms`), and the same per item
    (`landed_each_ms`, `checked_each_ms`)."""
    slots = slots or count
    timed = timeline is not None
    start = torch.cuda.Event(enable_timing=True) if timed else None
    if start is not None:
        start.record(stream)
    copy_stream = torch.cuda.Stream(stream.device)
    copy_stream.wait_stream(stream)  # what is still queued on `stream` may read the first targets
    arrived: list[torch.cuda.Event] = []
    freed: list[Optional[torch.cuda.Event]] = [None] * slots
    verifier: Optional[DeviceVerifier] = None

    def queue_copy(i: int) -> None:
        nonlocal verifier
        if freed[i % slots] is not None:
            copy_stream.wait_event(freed[i % slots])
        with torch.cuda.stream(copy_stream):
            target(i).copy_(source(i), non_blocking=True)
        if i == 0 and expected is not None:  # behind the first copy, ahead of the rest
            verifier = DeviceVerifier(expected.names, expected.crcs, stream.device, stream=stream,
                                      upload_stream=copy_stream)
        arrived.append(torch.cuda.Event(enable_timing=timed))
        arrived[-1].record(copy_stream)

    checked, done_each = None, []
    try:
        for i in range(min(slots, count)):
            queue_copy(i)
        with torch.cuda.stream(stream):
            for i in range(count):
                if before_check is not None:
                    before_check(i)
                stream.wait_event(arrived[i])
                data = target(i)
                if verifier is not None:
                    verifier.check(i, data, expected.chunk_sizes[i], expected.padded[i])
                if landed is not None:
                    landed(i, data)
                if timed:
                    done_each.append(torch.cuda.Event(enable_timing=True))
                    done_each[-1].record(stream)
                if i + slots < count:
                    freed[i % slots] = torch.cuda.Event()
                    freed[i % slots].record(stream)
                    queue_copy(i + slots)
            checked = torch.cuda.Event(enable_timing=True) if timed else None
            if checked is not None:
                checked.record(stream)
    finally:
        stream.wait_stream(copy_stream)
        stream.synchronize()
    if start is not None and checked is not None and arrived:
        timeline.update(last_landed_ms=start.elapsed_time(arrived[-1]), checked_ms=start.elapsed_time(checked),
                        landed_each_ms=[start.elapsed_time(e) for e in arrived],
                        checked_each_ms=[start.elapsed_time(e) for e in done_each])
    if verifier is not None:
        verifier.raise_if_failed()


def upload_checked(parts: list[torch.Tensor], staging: torch.Tensor, *,
                   expected_crcs: Optional[list[list[int]]] = None, chunk_size: int = 4 << 20,
                   names: Optional[list[str]] = None) -> list[torch.Tensor]:
    """Copies each host part (pinned or CUDA-registered bytes) into `staging`, back to back,
    on a copy stream, checks each on the GPU as it lands (against `expected_crcs[i]`, the
    file's chunk CRCs of that part), waits, and raises ChecksumError naming the first bad
    part. Returns the parts' device views. Nothing but `staging` is written, so a caller
    can verify everything before it changes anything else."""
    sizes = [p.numel() * p.element_size() for p in parts]
    if staging.numel() * staging.element_size() < sum(sizes):
        raise SchemaError("staging buffer too small")
    offsets = np.cumsum([0] + sizes).tolist()
    views = [staging[offsets[i]:offsets[i + 1]] for i in range(len(parts))]
    expected = None if expected_crcs is None else ExpectedChunks(
        names or [f"kv layer {i}" for i in range(len(parts))], expected_crcs, [chunk_size] * len(parts),
        [None] * len(parts))
    copy_checked(len(parts), lambda i: parts[i].reshape(-1).view(torch.uint8), lambda i: views[i],
                 stream=torch.cuda.current_stream(staging.device), expected=expected)
    return views


def upload_and_scatter(layers: list[torch.Tensor], block_ids: torch.Tensor,
                       host_packed: "torch.Tensor | list[torch.Tensor]",
                       staging: torch.Tensor, *, block_dim: int = 0,
                       expected_crcs: Optional[list[list[int]]] = None, chunk_size: int = 4 << 20,
                       names: Optional[list[str]] = None) -> None:
    """Restore path for KV pages: host (pinned) packed pages -> GPU staging -> paged layers.

    `host_packed` is one pinned buffer holding every layer's packed pages in order, or one
    pinned (or CUDA-registered) uint8 tensor per layer. Every layer is uploaded and checked
    first (`upload_checked`, raising ChecksumError naming the layer before any block is
    written), then each is scattered into its blocks. `names` label the layers in errors.
    """
    plans = [PagePlan([t], block_ids, block_dim) for t in layers]
    per_layer = plans[0].packed_bytes if plans else 0
    if isinstance(host_packed, torch.Tensor):
        host_packed = [host_packed[i * per_layer:(i + 1) * per_layer] for i in range(len(layers))]
    views = upload_checked(list(host_packed), staging, expected_crcs=expected_crcs, chunk_size=chunk_size,
                           names=names)
    scatter_staged(plans, views)


def scatter_staged(plans: "list[PagePlan]", views: list[torch.Tensor]) -> None:
    """Scatters each staged, already checked layer into its blocks (device to device)."""
    compute = torch.cuda.current_stream()
    for plan, view in zip(plans, views):
        if view.numel() != plan.packed_bytes:
            raise SchemaError(f"staged layer holds {view.numel()} bytes; its blocks take {plan.packed_bytes}")
        plan.scatter(view, compute)


def device_crc32c_chunks(t: torch.Tensor, chunk_size: int, padded_len: Optional[int] = None,
                         stream: Optional[torch.cuda.Stream] = None) -> list[int]:
    """CRC32C per chunk of a contiguous CUDA tensor's bytes, zero-padded to `padded_len`
    (default: rounded up to 4096), equal to what the snapshot file records."""
    n = t.numel() * t.element_size()
    padded = padded_len or align_up(n)
    s = stream or torch.cuda.current_stream(t.device)
    mod = cuda_movers()
    need = mod.crc32c_scratch_bytes(padded)
    with torch.cuda.stream(s):
        scratch = torch.empty(need, dtype=torch.uint8, device=t.device)
        out = torch.empty(-(-padded // chunk_size) if chunk_size > 0 else 0, dtype=torch.int32, device=t.device)
        mod.crc32c_chunks_async(t.data_ptr(), n, padded, chunk_size, scratch.data_ptr(), need, out.data_ptr(),
                                0, 0, s.cuda_stream)
    s.synchronize()
    return out.cpu().numpy().view(np.uint32).tolist()


def device_crc32c(t: torch.Tensor, chunk_size: int = 4 << 20) -> int:
    """CRC32C of a contiguous CUDA tensor's bytes, equal to the CPU movers' `crc32c`:
    chunk CRCs of the 4096-aligned body on the GPU, combined on the host with the tail's."""
    data = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    n = data.numel()
    body = n - n % 4096
    mv = movers()
    crc = 0
    if body:
        for i, c in enumerate(device_crc32c_chunks(data[:body], chunk_size, body)):
            crc = mv.crc32c_combine(crc, c, min(chunk_size, body - i * chunk_size))
    if n > body:
        crc = mv.crc32c_combine(crc, mv.crc32c(data[body:].cpu()), n - body)
    return crc


def free_device_bytes(device: torch.device) -> int:
    """What `device` could still hand out: its free memory plus torch's unused reserve."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


STAGING_HEADROOM = 1 << 30  # left free on the device beside what thaw stages there


def room_for(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` more can be staged on `device` with STAGING_HEADROOM left free
    (never on a device other than CUDA)."""
    return device.type == "cuda" and free_device_bytes(device) >= nbytes + STAGING_HEADROOM
