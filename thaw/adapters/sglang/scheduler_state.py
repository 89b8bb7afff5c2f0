"""The one place thaw keeps state on SGLang's objects: an attribute of each, named here.

- `STATE_ATTRIBUTE` on the `Scheduler` (`thaw_state(s)`): what the engine's weights are
  known to be (`thaw.core.engine_weights`) and the snapshot files kept ready between restores;
- `SLOT_TOKENS_ATTRIBUTE` on a radix cache: the token of every KV slot its inserts filled
  (`slot_walk.SlotTokens`, for the Rust tree core, whose nodes hold no tokens);
- `RECORDING_ATTRIBUTE` on a radix cache class's `insert`: thaw's recorder wraps it.

Read and written only on the scheduler's thread, between batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thaw.core.engine_weights import EngineWeights

from .prepared import PreparedFiles

STATE_ATTRIBUTE = "_thaw_state"
SLOT_TOKENS_ATTRIBUTE = "_thaw_slot_tokens"
RECORDING_ATTRIBUTE = "_thaw_records"


@dataclass
class SchedulerState:
    weights: EngineWeights = field(default_factory=EngineWeights)
    files: PreparedFiles = field(default_factory=PreparedFiles)


def thaw_state(s: Any) -> SchedulerState:
    state = getattr(s, STATE_ATTRIBUTE, None)
    if state is None:
        state = SchedulerState()
        setattr(s, STATE_ATTRIBUTE, state)
    return state
