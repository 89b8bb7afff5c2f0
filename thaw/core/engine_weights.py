"""What an engine's weights are known to be: kept by its adapter, one per engine.

`digest(fmt, compute)` is the weights' digest in a format, computed once (`compute`) and
cached until the weights change; "" while they are unknown (dummy weights never restored,
or a load that failed partway). The restore transaction's weights step reports to it:
`committed(snap)` after `snap`'s weights were loaded, `failed(message)` after a load failed
partway, which leaves the engine's weights a mix: until a restore with weights succeeds,
`refuse_if_inconsistent` raises `WeightsInconsistent` (snapshots, captures). `forget()`
after the weights changed outside thaw. Touched only from the thread that drives the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .errors import WeightsInconsistent
from .schema import CHECKPOINT_WEIGHTS, StateSnapshot
from .tensor_data import TensorData


@dataclass
class EngineWeights:
    known: bool = True  # False: dummy weights, not restored (or a failed load): digests are ""
    restored: Optional[dict[str, TensorData]] = None  # checkpoint tensors of the last restore that loaded them
    restored_from: Optional[str] = None  # the file those came from (None: an in-memory snapshot)
    inconsistent: Optional[str] = None  # why the weights may be a mix, after a load failed partway
    digests: dict[str, str] = field(default_factory=dict)  # by weights format

    def digest(self, weights_format: str, compute: Callable[[], str]) -> str:
        if not self.known:
            return ""
        if weights_format not in self.digests:
            self.digests[weights_format] = compute()
        return self.digests[weights_format]

    def restored_tensors(self) -> Optional[dict[str, torch.Tensor]]:
        """The last restore's checkpoint tensors (read and checked from their file), if any."""
        return None if self.restored is None else {name: data.tensor() for name, data in self.restored.items()}

    def committed(self, snap: StateSnapshot) -> None:
        self.digests = {snap.weights_format: snap.identity.weights_digest}
        self.restored = dict(snap.weights) if snap.weights_format == CHECKPOINT_WEIGHTS else None
        self.restored_from = snap.weights_source.path if snap.weights_source is not None else None
        self.known, self.inconsistent = True, None

    def failed(self, message: str) -> None:
        self.known, self.inconsistent, self.digests, self.restored = False, message, {}, None

    def forget(self) -> None:
        self.digests.clear()
        self.restored = None

    def refuse_if_inconsistent(self) -> None:
        if self.inconsistent:
            raise WeightsInconsistent(self.inconsistent)
