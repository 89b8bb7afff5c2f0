"""Pools of started engines that fork snapshots on demand, on one machine or a Ray cluster.

`EnginePool` is the one API; `LocalPlacement` (child processes here) and `RayPlacement`
(Ray actors placed by resources) say where its engines run. See `pool` for the contract.
"""

from .placement import EngineLost, LocalPlacement, RayPlacement
from .pool import Branch, EnginePool, FleetError, Served

__all__ = ["Branch", "EngineLost", "EnginePool", "FleetError", "LocalPlacement", "RayPlacement", "Served"]
