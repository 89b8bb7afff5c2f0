"""The snapshot files an SGLang scheduler restores from, kept ready between restores.

Forks restore one file again and again: it is opened once (header and section table) while
it stays the same file (path, inode, size, modification time), registered with CUDA once
(it and the file its weights are referenced from stay registered), and with
`prepare(kv_on_device=True)` its KV pages are kept, checked, in GPU memory beside the pool,
so that a restore writes them into the pool without the link. A restore from the file
uploads its KV through a staging ring of a few layers kept here across restores (no device
allocation per restore; `release` frees it). Every section's bytes are still checked
against their CRCs when first read.

Contract: one per scheduler (`scheduler_state.thaw_state(s).files`), used from the
scheduler's thread between batches (a file released here is not being read).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from thaw.core import EngineUnsupported, KVLayout, StateSnapshot
from thaw.core.prepared_files import PreparedFiles as BasePreparedFiles
from thaw.core.residency import is_cold

from . import gpu_pages


class PreparedFiles(BasePreparedFiles):
    """`thaw.core.prepared_files.PreparedFiles` for one SGLang scheduler, with the staging
    ring its KV uploads go through; what it keeps on the device is each layer's pages."""

    def __init__(self) -> None:
        super().__init__()
        self._ring: Optional[torch.Tensor] = None  # the KV upload's staging slots, kept across restores

    def staging_ring(self, registered: Any, names: list[str], device: torch.device) -> torch.Tensor:
        """Slots for uploading the sections `names` of the registered file
        (`thaw.core.gpu_files.staging_ring`): the kept ring where it fits, else a new one
        that is kept instead."""
        from thaw.core.gpu_files import staging_ring

        self._ring = staging_ring(registered, names, device, ring=self._ring)
        return self._ring

    def resident_pages(self, container: Any) -> Optional[list[torch.Tensor]]:
        """The KV pages `prepare(kv_on_device=True)` keeps for the file `container` is, if any."""
        return self.resident(container)

    def prepare(self, path: str, kv_pool: Any, layout: KVLayout, kv_on_device: bool) -> None:
        """Opens `path`; on CUDA registers it (and the file its weights are referenced from);
        with `kv_on_device` also uploads its KV pages, checked on the GPU as they land, and
        keeps them (their size beside the pool) until another file is prepared so or
        `release`. Raises EngineUnsupported, naming why, where the pages cannot be kept."""
        snap = self.opened(path)
        cuda, local = gpu_pages.on_cuda(kv_pool), snap.source is not None and snap.source.is_local
        if kv_on_device:
            if not cuda:
                raise EngineUnsupported("kv_on_device needs a CUDA engine; this one runs on the CPU")
            if not local:
                raise EngineUnsupported(f"kv_on_device uploads the KV sections of a local file; {path} is read "
                                        "from object storage: set THAW_CACHE_DIR to keep a checked local copy")
            if snap.kv is None or not gpu_pages.file_pages_fit(snap, layout, kv_pool):
                raise EngineUnsupported(f"kv_on_device keeps a snapshot's pages as they are in its file; {path} "
                                        "has no KV, or its pages must be re-cut or converted for this engine")
        if not (cuda and local):
            return
        reg = self.register_sources(snap)
        if kv_on_device:
            self.keep_resident(path, lambda: gpu_pages.upload_checked_pages(snap, reg, kv_pool.k_buffer[0].device))

    def release(self) -> None:
        """Frees the CUDA registrations, the KV pages kept on the device and the staging ring."""
        self._ring = None
        super().release()


def cold_files(snap: StateSnapshot) -> dict[str, bool]:
    """Which of the snapshot's local files (its own, the one its weights are referenced
    from) are mostly outside the page cache, measured before the restore reads them:
    reading a small file's KV through the mapping brings the rest of it back."""
    files = [c for c in (snap.source, snap.weights_source) if c is not None and c.is_local]
    return {c.path: is_cold(c.path) for c in files}
