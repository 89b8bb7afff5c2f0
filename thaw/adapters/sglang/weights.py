"""A restore's weights into SGLang: staged (`stage`), then loaded (`WeightsLoad`).

SGLang's tensor weight update moves each host tensor to the GPU on its own (`.to(device)`
from pageable memory). When the engine runs on CUDA, the weights lie in one local snapshot
file and the GPU has room for a copy of them, they are instead copied from the file
registered with CUDA (route ``checkpoint/gpu-staged``) or, for a file mostly outside the
page cache, read with O_DIRECT through pinned buffers (``checkpoint/gpu-streamed``), and
every chunk is checked (on the GPU, or on the host as it is read) before the engine is
touched; `load_weights` then copies on the device. Otherwise they are read and checked on
the host (``checkpoint/host``, with the reason).

Contract: call from the scheduler's thread during a restore, before anything in the engine
changes; what `stage` returns is freed by dropping it. `WeightsLoad` is the restore
transaction's weights step (`thaw.core.restore.WeightsLoad`): `stage`, then `commit` through
SGLang's tensor weight-update path.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from thaw.core import StateSnapshot, ThawError
from thaw.core.gpu import room_for
from thaw.core.gpu_files import copy_sections_to_gpu, stream_sections_to_gpu

from . import engine_access
from .engine_access import kv_pool, model_runner
from .prepared import PreparedFiles


def stage(snap: StateSnapshot, device: torch.device, registered_for: Callable[[Any], Any],
          cold_files: dict[str, bool]) -> tuple[list[tuple[str, torch.Tensor]], str]:
    """The snapshot's weights as (name, tensor) pairs, read and checked, and the route
    taken. `registered_for(container)` gives the file registered with CUDA; `cold_files`
    says which files were mostly outside the page cache when the restore began."""
    held_in = snap.weights_source
    nbytes = sum(d.nbytes for d in snap.weights.values())
    reason = None
    if device.type != "cuda":
        reason = "the engine runs on the CPU"
    elif held_in is None or not held_in.is_local:
        reason = "the weights are not in one local file"
    elif not room_for(device, nbytes):
        reason = f"too little free GPU memory to stage {nbytes} bytes"
    if reason is not None:
        return [(name, d.tensor()) for name, d in snap.weights.items()], f"checkpoint/host ({reason})"
    targets = {d.section_name: torch.empty(d.shape, dtype=d.dtype, device=device) for d in snap.weights.values()}
    if cold_files.get(held_in.path, False):
        stream_sections_to_gpu(held_in, targets)
        route = "checkpoint/gpu-streamed"
    else:
        copy_sections_to_gpu(registered_for(held_in), targets, verify="gpu")
        route = "checkpoint/gpu-staged"
    return [(name, targets[d.section_name]) for name, d in snap.weights.items()], route


class WeightsLoad:
    """The snapshot's checkpoint tensors, staged on the GPU where it can hold them
    (`weights.stage`, which names the route), else read and checked on the host; then
    loaded through the model's `load_weights` (SGLang's tensor weight-update path)."""

    def __init__(self, s: Any, snap: StateSnapshot, files: PreparedFiles, cold_files: dict[str, bool]) -> None:
        self.s, self.snap, self.files, self.cold_files = s, snap, files, cold_files
        self.route: Optional[str] = None
        self.named: list[tuple[str, torch.Tensor]] = []

    def stage(self) -> None:
        device = kv_pool(self.s).k_buffer[0].device
        self.named, self.route = stage(self.snap, device, self.files.registered, self.cold_files)

    def commit(self) -> int:
        ok, message = engine_access.update_weights_from_tensor(model_runner(self.s), self.named)
        if not ok:
            raise ThawError(f"SGLang refused the snapshot's weights: {message}")
        loaded, self.named = len(self.named), []
        return loaded

    def release(self) -> None:
        self.named = []
