"""What every adapter says when a restore replaces an engine's weights: the refusal while
requests still run on the old ones, and the error when loading the new ones failed partway.

The rule itself (refuse running requests, write every snapshot page afresh, drop every other
cached prefix once the weights are in, and drop them too when the load fails) is each
adapter's restore sequence; these two keep its words one.
"""

from __future__ import annotations

from .errors import ThawError, WeightsInconsistent


def refuse_requests_on_old_weights(live: list[str]) -> None:
    """Raises, naming them, when requests (`live`, by id) still run on the weights a restore
    would replace; returns when there are none."""
    if live:
        raise ThawError(f"the snapshot's weights would replace the ones requests {sorted(live)[:8]} "
                        f"({len(live)} in all) are running on: let them finish or abort them first, or "
                        "restore with weights=False")


def failed_partway(exc: BaseException, cache: str) -> WeightsInconsistent:
    """The error of a weights load that raised `exc` after it may have changed some weights;
    `cache` names what the adapter dropped ("prefix cache", "radix cache")."""
    return WeightsInconsistent(f"loading the snapshot's weights failed partway ({type(exc).__name__}: {exc}); "
                               f"the {cache} was dropped, and the engine may hold a mix of old and new weights: "
                               "restore a snapshot with weights before serving again")
