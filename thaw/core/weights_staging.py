"""A restore's checkpoint weights, read and every chunk checked before the engine is touched,
where the engine will take them from: the one route chooser every adapter uses.

Routes (the report's ``weights_route``):
  checkpoint/gpu-staged    copied from the snapshot file registered with CUDA into GPU
                           tensors and checked there;
  checkpoint/gpu-streamed  the same from a file mostly outside the page cache (`cold`),
                           read with O_DIRECT through pinned buffers, checked as read;
  checkpoint/host (why)    read and checked on the host: the engine runs on the CPU, the
                           weights are not in one local file, or the GPU has too little room
                           (`thaw.core.gpu.room_for`).
What `stage_checkpoint` returns is freed by dropping it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .gpu import room_for
from .schema import StateSnapshot


def stage_checkpoint(snap: StateSnapshot, device: torch.device, registered_for: Callable[[Any], Any], *,
                     cold: bool) -> tuple[dict[str, torch.Tensor], str]:
    """`snap`'s weights by name, read and checked, and the route taken. `registered_for(container)`
    gives the file registered with CUDA; `cold`: the file holding the weights was mostly
    outside the page cache when the restore began."""
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
        return {name: d.tensor() for name, d in snap.weights.items()}, f"checkpoint/host ({reason})"
    from .gpu_files import copy_sections_to_gpu, stream_sections_to_gpu

    targets = {d.section_name: torch.empty(d.shape, dtype=d.dtype, device=device) for d in snap.weights.values()}
    if cold:
        stream_sections_to_gpu(held_in, targets)
        route = "checkpoint/gpu-streamed"
    else:
        copy_sections_to_gpu(registered_for(held_in), targets, verify="gpu")
        route = "checkpoint/gpu-staged"
    return {name: targets[d.section_name] for name, d in snap.weights.items()}, route
