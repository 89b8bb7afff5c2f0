"""Snapshot pages written into SGLang KV pool slots, one layer at a time.

A `PoolWrites` is worked out once per restore from the slots the allocator handed out and
which snapshot page each slot run comes from; `write_layer` then copies one layer's pages
(`[n, page_elems]`, layout "sglang.nhd": a page's K rows, then its V rows) into the pool's
K and V buffers. Layers can be written as they arrive (the GPU restore writes each one on
the stream its check ran on, while later layers still upload).

Contract: the slots are fresh (no radix node names them), so writing them changes nothing
the engine can look up; call from the scheduler's thread between batches.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


class PoolWrites:
    """Where each snapshot page of a restore goes in the pool.

    `page_ids` are the snapshot pages in slot order (None: every page, in order); `slots`
    holds `len(page_ids) * page_size` pool slots.
    """

    def __init__(self, kv_pool: Any, slots: torch.Tensor, page_ids: Optional[torch.Tensor]) -> None:
        k0 = kv_pool.k_buffer[0]
        self.kv_pool, self.page_ids = kv_pool, page_ids
        self.runs = _runs(slots.to("cpu", torch.int64))
        self.slots = slots.to(k0.device)
        self.rows = tuple(k0.shape[1:])
        self._device_ids: dict[torch.device, torch.Tensor] = {}

    def write_layer(self, layer: int, pages: torch.Tensor) -> None:
        """Copies one layer's snapshot pages (on the host or the pool's device) into its
        slots: runs of consecutive slots as plain copies read straight from each page's K
        or V half, else one indexed copy."""
        if not len(self.slots):
            return
        if self.page_ids is not None:
            pages = pages.index_select(0, self._ids_on(pages.device))
        n = pages.shape[0]
        per_page = len(self.slots) // n
        whole_pages = self.runs is not None and self.kv_pool.k_buffer[0].shape[0] % per_page == 0 and all(
            a % per_page == 0 and first % per_page == 0 and m % per_page == 0 for a, first, m in self.runs)
        halves = pages.reshape(n, 2, -1)
        for buf, half in ((self.kv_pool.k_buffer[layer], halves[:, 0]), (self.kv_pool.v_buffer[layer], halves[:, 1])):
            src = half.view((n, per_page) + self.rows).to(buf.device)  # a view of the half, as pages
            if whole_pages:
                dst = buf.view((-1, per_page) + self.rows)
                for a, first, m in self.runs:
                    dst[first // per_page:(first + m) // per_page].copy_(src[a // per_page:(a + m) // per_page])
            elif self.runs is None:
                buf.index_copy_(0, self.slots, src.reshape((len(self.slots),) + self.rows))
            else:
                flat = src.reshape((len(self.slots),) + self.rows)
                for a, first, m in self.runs:
                    buf[first: first + m].copy_(flat[a: a + m])

    def _ids_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._device_ids:
            self._device_ids[device] = self.page_ids.to(device)
        return self._device_ids[device]


def _runs(slots: torch.Tensor) -> Optional[list[tuple[int, int, int]]]:
    """(position, first slot, length) of each run of consecutive slots; None if there are
    so many runs that one indexed copy is cheaper."""
    if len(slots) == 0:
        return []
    breaks = (torch.nonzero(slots[1:] != slots[:-1] + 1).reshape(-1) + 1).tolist()
    if len(breaks) > 64:
        return None
    starts = [0] + breaks
    ends = breaks + [len(slots)]
    return [(a, int(slots[a]), b - a) for a, b in zip(starts, ends)]
