"""The one clock of thaw's reports: seconds per named phase of a restore, a snapshot or a
readying of files, each lap measured from the previous one (or from the clock's start)."""

from __future__ import annotations

import time


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        """Adds the seconds since the last lap to phase `name`; returns them."""
        now = time.perf_counter()
        spent, self._last = now - self._last, now
        self.seconds[name] = self.seconds.get(name, 0.0) + spent
        return spent
