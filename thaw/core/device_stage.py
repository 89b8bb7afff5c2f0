"""Section payloads in CUDA memory, written into a snapshot file without a host copy of them all.

A snapshot of a GPU engine's weights used to copy every parameter to host memory first,
then checksum and write it. Here the payloads are cut into pieces of at most
`STAGE_BYTES`; each piece is copied device -> pinned host on a side stream into one of
two staging buffers while the piece before it is checksummed and written from the other,
across section boundaries, so the file write (the slow side) never waits for the link.

Contract: the device tensors stay unchanged until `write_container` returns (a snapshot
is taken with the engine idle), and `write` is called once per device section, in the
order the sections were given. `close` waits for copies in flight, also after a failure,
so no staging buffer is freed under a copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

STAGE_BYTES = 256 << 20  # per staging buffer (two are used); rounded to whole chunks


def on_device(view: object) -> bool:
    """Whether `view` is a torch tensor outside host memory (a payload for this module)."""
    device = getattr(view, "device", None)
    return device is not None and getattr(device, "type", "cpu") != "cpu"


class DeviceStager:
    """Writes the given 1-D uint8 CUDA views, one section at a time, through two pinned buffers."""

    def __init__(self, views: list["torch.Tensor"], chunk_size: int) -> None:
        import torch

        stage = max(chunk_size, STAGE_BYTES // chunk_size * chunk_size)  # pieces end on chunk boundaries
        self._views = views
        self._pieces = [(i, start, min(stage, v.numel() - start))
                        for i, v in enumerate(views) for start in range(0, v.numel(), stage)]
        biggest = max((p[2] for p in self._pieces), default=0)
        self._host = [torch.empty(biggest, dtype=torch.uint8, pin_memory=True) for _ in range(2)] if biggest else []
        self._stream = torch.cuda.Stream(device=views[0].device)
        self._stream.wait_stream(torch.cuda.current_stream(views[0].device))  # the payloads are final
        self._events = [torch.cuda.Event(), torch.cuda.Event()]
        self._next_piece = 0
        self._next_section = 0
        if self._pieces:
            self._launch(0)

    def _launch(self, k: int) -> None:
        import torch

        index, start, length = self._pieces[k]
        with torch.cuda.stream(self._stream):
            self._host[k % 2][:length].copy_(self._views[index][start:start + length], non_blocking=True)
            self._events[k % 2].record(self._stream)

    def write(self, sink: Callable[[int, Any, int], list], offset: int, padded_length: int) -> list[int]:
        """Writes the next device section at file offset `offset` (then zeros to
        `padded_length`) through `sink(offset, host bytes, padded length)`, which writes or
        copies them into the file and returns the CRC32C of every chunk
        (`container.write_container`'s sinks); returns the section's chunk CRCs."""
        index = self._next_section
        self._next_section += 1
        if self._views[index].numel() == 0:
            return sink(offset, b"", padded_length)
        crcs: list[int] = []
        while self._next_piece < len(self._pieces) and self._pieces[self._next_piece][0] == index:
            k = self._next_piece
            _, start, length = self._pieces[k]
            self._events[k % 2].synchronize()
            if k + 1 < len(self._pieces):
                self._launch(k + 1)  # into the other buffer, written out before this one was filled
            last = k + 1 == len(self._pieces) or self._pieces[k + 1][0] != index
            extent = padded_length - start if last else length
            crcs += sink(offset + start, self._host[k % 2][:length], extent)
            self._next_piece += 1
        return crcs

    def close(self) -> None:
        """Waits for any copy still in flight (safe to call more than once)."""
        self._stream.synchronize()
