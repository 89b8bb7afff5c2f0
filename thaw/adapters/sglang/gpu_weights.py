"""A snapshot's checkpoint weights put in GPU memory for SGLang's `load_weights`.

SGLang's tensor weight update moves each host tensor to the GPU on its own (`.to(device)`
from pageable memory). When the engine runs on CUDA, the weights lie in one local snapshot
file and the GPU has room for a copy of them, they are instead copied from the file
registered with CUDA (route ``checkpoint/gpu-staged``) or, for a file mostly outside the
page cache, read with O_DIRECT through pinned buffers (``checkpoint/gpu-streamed``), and
every chunk is checked (on the GPU, or on the host as it is read) before the engine is
touched; `load_weights` then copies on the device. Otherwise they are read and checked on
the host (``checkpoint/host``, with the reason).

Contract: call from the scheduler's thread during a restore, before anything in the engine
changes; what `stage` returns is freed by dropping it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from thaw.core import StateSnapshot
from thaw.core.gpu import room_for
from thaw.core.gpu_files import copy_sections_to_gpu, stream_sections_to_gpu


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
    targets = {d._section: torch.empty(d.shape, dtype=d.dtype, device=device) for d in snap.weights.values()}
    if cold_files.get(held_in.path, False):
        stream_sections_to_gpu(held_in, targets)
        route = "checkpoint/gpu-streamed"
    else:
        copy_sections_to_gpu(registered_for(held_in), targets, verify="gpu")
        route = "checkpoint/gpu-staged"
    return [(name, targets[d._section]) for name, d in snap.weights.items()], route
