"""SGLang's KV pool on a CUDA device, moved by thaw's CUDA movers.

A snapshot's pages are gathered on the GPU (one kernel for every layer's K pages, one for
the V pages) and copied to pinned host memory in one transfer. A restore uploads the
snapshot file's KV sections from the page cache (the file registered with CUDA) through a
staging ring of a few layers, checks every chunk's CRC32C on the GPU as it lands and hands
each layer on to be written into slots nothing names yet. The page bytes are
those of `capture` (layout "sglang.nhd": a page's K rows, then its V rows).

Contract: as `capture`, call only from the scheduler's thread between batches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from thaw.core import KVLayout, SchemaError, StateSnapshot


def on_cuda(kv_pool: Any) -> bool:
    return bool(kv_pool.k_buffer[0].is_cuda)


def _page_views(buffers: list[torch.Tensor], page_size: int) -> list[torch.Tensor]:
    """Each [slots, heads, head_dim] buffer as [pool pages, page elems] (a page is
    `page_size` consecutive slots, SGLang's own page)."""
    if buffers[0].shape[0] % page_size:
        raise SchemaError(f"SGLang KV buffer of {buffers[0].shape[0]} slots is not whole pages of {page_size}")
    return [b.view(b.shape[0] // page_size, -1) for b in buffers]


def gather(kv_pool: Any, pool_pages: list[int], page_size: int, *, for_writer: bool = False
           ) -> tuple[list[torch.Tensor], str]:
    """Every layer's listed pages, [n, page_elems] each (K then V within each page), and
    where they are: with `for_writer` (the file writer copies them out before the engine
    runs again) and room on the device, in device memory ("device": the writer moves them
    to the host piece by piece while it writes), else in pinned host memory ("pinned host")."""
    from thaw.core.gpu import PagePlan, room_for

    k0 = kv_pool.k_buffer[0]
    layers, n, plane = len(kv_pool.k_buffer), len(pool_pages), page_size * k0[0].numel()
    packed_bytes = layers * n * 2 * plane * k0.element_size()
    # on the device: the K and V halves, then both interleaved page by page (twice the bytes)
    route = "device" if for_writer and room_for(k0.device, 2 * packed_bytes) else "pinned host"
    out = torch.empty((layers, n, 2, plane), dtype=k0.dtype, device=k0.device)
    if n:
        ids = torch.tensor(pool_pages, dtype=torch.int64, device=k0.device)
        halves = []
        for buffers in (kv_pool.k_buffer, kv_pool.v_buffer):
            packed = torch.empty((layers, n, plane), dtype=k0.dtype, device=k0.device)
            PagePlan(_page_views(buffers, page_size), ids).gather(packed)
            halves.append(packed)
        torch.stack(halves, dim=2, out=out)  # K then V within each page
    if route != "device":
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        out = host.copy_(out)  # one transfer
    return list(out.view(layers, n, 2 * plane).unbind(0)), route


def file_pages_fit(snap: StateSnapshot, layout: KVLayout, kv_pool: Any) -> bool:
    """Whether the snapshot's KV can go to the GPU straight from its file: a CUDA pool, and
    layers still in the file, in this engine's layout (not re-cut or converted)."""
    return (on_cuda(kv_pool) and snap.kv is not None and bool(snap.kv.layers) and snap.kv.layout == layout
            and all(not layer.in_memory for layer in snap.kv.layers))


def _layer_sections(snap: StateSnapshot) -> dict[str, tuple[int, Any]]:
    """Each KV layer's file section -> (layer index, layer)."""
    return {layer.section_name: (i, layer) for i, layer in enumerate(snap.kv.layers)}


def kv_sections(snap: StateSnapshot) -> list[str]:
    """The file sections of the snapshot's KV layers, in layer order."""
    return list(_layer_sections(snap))


def _as_pages(layer: Any, data: torch.Tensor) -> torch.Tensor:
    return data.view(layer.dtype).view(layer.shape)


def upload_checked_pages(snap: StateSnapshot, registered: Any, device: torch.device) -> list[torch.Tensor]:
    """Every KV layer of the file in one new device buffer, [pages, page_elems] each,
    checked on the GPU against the file's chunk CRCs (what `prepare(kv_on_device=True)`
    keeps); ChecksumError names the first bad section once every layer has landed."""
    from thaw.core.gpu_files import upload_sections

    layers = _layer_sections(snap)
    buf = upload_sections(registered, list(layers), device)
    pages, at = [], 0
    for name, (_, layer) in layers.items():
        n = registered.container.section(name).length
        pages.append(_as_pages(layer, buf[at:at + n]))
        at += n
    return pages


def write_checked_pages(snap: StateSnapshot, registered: Any, ring: torch.Tensor,
                        landed: Callable[[int, torch.Tensor], None]) -> None:
    """Every KV layer of the file uploaded through the staging `ring`
    (`thaw.core.gpu_files.staging_ring`), checked on the GPU and handed to
    `landed(layer, pages)` ([pages, page_elems]) on the current stream: what it queues
    must copy the pages out (the slot is reused) and runs before the checks are known, so
    it may only write what the caller can give back when this raises ChecksumError."""
    from thaw.core.gpu_files import stream_checked_sections

    layers = _layer_sections(snap)

    def hand_over(name: str, data: torch.Tensor) -> None:
        index, layer = layers[name]
        landed(index, _as_pages(layer, data))

    stream_checked_sections(registered, list(layers), ring, hand_over)
