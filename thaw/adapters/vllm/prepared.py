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
import time
from typing import Any, Optional, Union

import torch

from thaw.core import EngineUnsupported, StateSnapshot
from thaw.core.container import file_key
from thaw.core.gpu_files import RegisteredFiles
from thaw.core.tp import check_ranks, merge_ranks, view_at
from thaw.core.tp_files import load_ranks, source_key

from . import engine_access

KEPT_REGISTRATIONS = 2  # a restore reads at most two files: its own, the one its weights come from


class PreparedFiles:
    def __init__(self, parts: engine_access.EngineParts) -> None:
        self.parts = parts
        self._registrations = RegisteredFiles(KEPT_REGISTRATIONS)  # registers nothing until asked
        self._resident: Optional[tuple[tuple, torch.Tensor]] = None  # file key, its KV pages on the device
        self._opened: Optional[tuple[tuple, StateSnapshot, int]] = None  # key, snapshot, its ranks

    def opened(self, path: Union[str, os.PathLike]) -> tuple[StateSnapshot, int]:
        """The snapshot at `path` (one file, or a tensor-parallel directory of rank files)
        as this engine restores it, and how many ranks wrote it; opened again only when its
        files change (path, inode, size, modification time).

        Ranks of another tensor parallel size than the engine's: an engine whose workers
        read the file gets rank 0 re-stated at its size (`tp.view_at`; each worker cuts its
        heads); an in-core engine (size 1) gets the ranks merged in memory."""
        key = source_key(path)
        if self._opened is None or self._opened[0] != key:
            ranks = load_ranks(path)
            if len(ranks) > 1:
                check_ranks(ranks)
            size = engine_access.tp_size(self.parts)
            if self.parts.workers is not None:
                snap = view_at(ranks, size)
            else:
                snap = merge_ranks(ranks) if len(ranks) > 1 else ranks[0]
            self._opened = (key, snap, len(ranks))
        return self._opened[1], self._opened[2]

    def registered(self, container: Any) -> Any:
        """The snapshot file mapped and registered with CUDA, kept for later restores
        (`thaw.core.gpu_files.RegisteredFiles`)."""
        return self._registrations.get(container)

    def resident_kv(self, container: Any) -> Optional[torch.Tensor]:
        """The KV pages `prepare(kv_on_device=True)` keeps for the file `container` is, if any."""
        if self._resident is not None and self._resident[0] == file_key(container.path):
            return self._resident[1]
        return None

    def prepare(self, path: Union[str, os.PathLike], *, kv_on_device: bool = False) -> float:
        """`VLLMHandle.prepare`; returns the seconds it took."""
        t0 = time.perf_counter()
        snap, _ = self.opened(path)
        if self.parts.on_cuda and snap.source is not None and snap.source.is_local:
            held_in = snap.weights_source  # a file its weights are referenced from: registered too
            if held_in is not None and held_in is not snap.source and held_in.is_local:
                self.registered(held_in)
            reg = self.registered(snap.source)
            if kv_on_device and snap.kv is not None:
                from thaw.core.gpu_files import upload_sections

                self._resident = None  # the previous file's pages go before the next are placed
                names = [layer._section for layer in snap.kv.layers]
                self._resident = (file_key(path), upload_sections(reg, names, self.parts.kv_caches[0].device))
        elif kv_on_device and self.parts.workers is not None:
            raise EngineUnsupported("kv_on_device keeps pages beside a CUDA pool the engine core holds; this "
                                    "engine's KV lives in worker processes")
        elif kv_on_device and self.parts.on_cuda:
            raise EngineUnsupported(f"kv_on_device uploads the KV sections of a local file; {path} is read "
                                    "from object storage: set THAW_CACHE_DIR to keep a checked local copy")
        elif kv_on_device:
            raise EngineUnsupported("kv_on_device needs a CUDA engine; this one runs on the CPU")
        return time.perf_counter() - t0

    def release(self) -> None:
        """Frees the CUDA registrations and the KV pages kept on the device."""
        self._resident = None
        self._registrations.close()
