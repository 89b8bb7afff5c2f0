"""The snapshot files a vLLM handle restores from, kept ready between restores.

Forks restore one file again and again: it is opened once (header and section table) while
its files stay the same ones, registered with CUDA once (the two files used last stay
registered), and with `prepare(kv_on_device=True)` its KV pages are kept checked in GPU
memory beside the pool. Every section's bytes are still checked against their CRCs when a
restore reads them.

Contract: used by one `VLLMHandle`, from the thread that drives its engine, between
restores (a file released here is not being read).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch

from thaw.core.phase_clock import PhaseClock
from thaw.core import EngineUnsupported, StateSnapshot
from thaw.core.prepared_files import PreparedFiles as BasePreparedFiles
from thaw.core.tp import check_ranks, merge_ranks, view_at
from thaw.core.tp_files import load_ranks

from . import engine_access

class PreparedFiles(BasePreparedFiles):
    """`thaw.core.prepared_files.PreparedFiles` for one vLLM engine: a snapshot is one file
    or a tensor-parallel directory of rank files; what it keeps on the device is one tensor
    of every layer's pages."""

    def __init__(self, parts: engine_access.EngineParts) -> None:
        super().__init__()
        self.parts = parts

    def open(self, path: Union[str, os.PathLike]) -> tuple[StateSnapshot, int]:
        """The snapshot at `path` as this engine restores it, and how many ranks wrote it.

        Ranks of another tensor parallel size than the engine's: an engine whose workers
        read the file gets rank 0 re-stated at its size (`tp.view_at`; each worker cuts its
        heads); an in-core engine (size 1) gets the ranks merged in memory."""
        ranks = load_ranks(path)
        if len(ranks) > 1:
            check_ranks(ranks)
        if self.parts.workers is not None:
            return view_at(ranks, engine_access.tp_size(self.parts)), len(ranks)
        return (merge_ranks(ranks) if len(ranks) > 1 else ranks[0]), len(ranks)

    def resident_kv(self, container: Any) -> Optional[torch.Tensor]:
        """The KV pages `prepare(kv_on_device=True)` keeps for the file `container` is, if any."""
        return self.resident(container)

    def prepare(self, path: Union[str, os.PathLike], *, kv_on_device: bool = False) -> float:
        """`VLLMHandle.prepare`; returns the seconds it took."""
        clock = PhaseClock()
        snap, _ = self.opened(path)
        if self.parts.on_cuda and snap.source is not None and snap.source.is_local:
            reg = self.register_sources(snap)
            if kv_on_device and snap.kv is not None:
                from thaw.core.gpu_files import upload_sections

                names = [layer.section_name for layer in snap.kv.layers]
                self.keep_resident(path, lambda: upload_sections(reg, names, self.parts.kv_caches[0].device))
        elif kv_on_device and self.parts.workers is not None:
            raise EngineUnsupported("kv_on_device keeps pages beside a CUDA pool the engine core holds; this "
                                    "engine's KV lives in worker processes")
        elif kv_on_device and self.parts.on_cuda:
            raise EngineUnsupported(f"kv_on_device uploads the KV sections of a local file; {path} is read "
                                    "from object storage: set THAW_CACHE_DIR to keep a checked local copy")
        elif kv_on_device:
            raise EngineUnsupported("kv_on_device needs a CUDA engine; this one runs on the CPU")
        return clock.lap("prepare")
