"""The snapshot files an engine restores from, kept ready between restores.

Forks restore one file again and again: it is opened once (header and section table) while
it stays the same file (`tp_files.source_key`: path, inode, size, modification time),
registered with CUDA once (it and the file its weights are referenced from stay
registered), and a file's KV pages can be kept, checked, in GPU memory beside the engine's
pool (`keep_resident`). Every section's bytes are still checked against their CRCs when
first read. Adapters subclass it (`open`: how the engine opens a snapshot; what they keep
besides).

Contract: one per engine, used from the thread that drives it, between restores (a file
released here is not being read).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

from .container import file_key
from .gpu_files import RegisteredFiles
from .snapshot_io import load
from .tp_files import source_key

PathLike = Union[str, "os.PathLike[str]"]
KEPT_REGISTRATIONS = 2  # a restore reads at most two files: its own, the one its weights come from


class PreparedFiles:
    def __init__(self) -> None:
        self._registrations = RegisteredFiles(KEPT_REGISTRATIONS)  # registers nothing until asked
        self._opened: Optional[tuple[tuple, Any]] = None  # source key, what `open` gave
        self._resident: Optional[tuple[tuple, Any]] = None  # file key, its KV pages on the device

    def open(self, path: PathLike) -> Any:
        """How this engine opens the snapshot at `path` (default: `load`, CRCs checked when read)."""
        return load(path, verify=False)

    def opened(self, path: PathLike) -> Any:
        """`open(path)`, done again only when what is at `path` changes."""
        key = source_key(path)
        if self._opened is None or self._opened[0] != key:
            self._opened = None
            self._opened = (key, self.open(path))
        return self._opened[1]

    def registered(self, container: Any) -> Any:
        """The file mapped and registered with CUDA, kept for later restores
        (`thaw.core.gpu_files.RegisteredFiles`)."""
        return self._registrations.get(container)

    def register_sources(self, snap: Any) -> Any:
        """Registers the snapshot's file and the local file its weights are referenced from
        (if another); returns the snapshot file's registration."""
        held_in = snap.weights_source
        if held_in is not None and held_in is not snap.source and held_in.is_local:
            self.registered(held_in)
        return self.registered(snap.source)

    def resident(self, container: Any) -> Optional[Any]:
        """What `keep_resident` keeps for the local file `container` is, if any."""
        if self._resident is not None and container.is_local and self._resident[0] == file_key(container.path):
            return self._resident[1]
        return None

    def keep_resident(self, path: PathLike, make: Callable[[], Any]) -> None:
        """Keeps `make()` (the file's KV pages on the device) for `path`, in place of the
        previous file's, which go first."""
        self._resident = None
        self._resident = (file_key(path), make())

    def release(self) -> None:
        """Frees the CUDA registrations and what `keep_resident` kept."""
        self._resident = None
        self._registrations.close()
