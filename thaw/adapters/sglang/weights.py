"""A restore's weights into SGLang (`WeightsLoad`, the restore transaction's weights step,
`thaw.core.restore.WeightsLoad`), on the scheduler's thread: `stage` reads and checks them
where the engine will take them from (`thaw.core.weights_staging`, which names the route:
on the GPU, SGLang's `load_weights` then copies on the device rather than moving each host
tensor up from pageable memory), `commit` loads them through SGLang's tensor weight-update
path."""

from __future__ import annotations

from typing import Any, Optional

import torch

from thaw.core import StateSnapshot, ThawError
from thaw.core.weights_staging import stage_checkpoint

from . import engine_access
from .engine_access import kv_pool, model_runner
from .prepared import PreparedFiles


class WeightsLoad:
    """The snapshot's checkpoint tensors, staged where the engine takes them from, then
    loaded through the model's `load_weights` (SGLang's tensor weight-update path)."""

    def __init__(self, s: Any, snap: StateSnapshot, files: PreparedFiles, cold_files: dict[str, bool]) -> None:
        self.s, self.snap, self.files, self.cold_files = s, snap, files, cold_files
        self.route: Optional[str] = None
        self.named: list[tuple[str, torch.Tensor]] = []

    def stage(self) -> None:
        held_in = self.snap.weights_source
        cold = held_in is not None and self.cold_files.get(held_in.path, False)
        staged, self.route = stage_checkpoint(self.snap, kv_pool(self.s).k_buffer[0].device, self.files.registered,
                                              cold=cold)
        self.named = list(staged.items())

    def commit(self) -> int:
        ok, message = engine_access.update_weights_from_tensor(model_runner(self.s), self.named)
        if not ok:
            raise ThawError(f"SGLang refused the snapshot's weights: {message}")
        loaded, self.named = len(self.named), []
        return loaded

    def release(self) -> None:
        self.named = []
