"""The paged server behind thaw's worker protocol, so thaw's conformance suite can drive it."""

from __future__ import annotations

import itertools
import time
from typing import Any, Optional

from thaw.core import load

from .engine import PagedEngine
from .thaw_adapter import attach


class PagedServerDriver:
    def __init__(self, config: dict[str, Any]) -> None:
        self.engine = PagedEngine(**config)
        self.thaw = attach(self.engine)
        self.ids = itertools.count()

    def info(self) -> dict[str, Any]:
        return {"identity": self.thaw.identity().to_json()}

    def generate(self, prompt_token_ids: list[int], max_tokens: int, temperature: float = 0.0,
                 seed: Optional[int] = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        rid = f"generate-{next(self.ids)}"
        req = self.engine.add_request(rid, prompt_token_ids, max_tokens, temperature, seed)
        self.engine.run({rid})
        return {"tokens": req.output, "cached_tokens": req.cached_tokens, "seconds": time.perf_counter() - t0}

    def state(self) -> dict[str, Any]:
        e = self.engine
        return {"free": len(e.free), "cached_pages": len(e.index), "requests": sorted(e.requests)}

    def snapshot(self, path: str, weights: bool = True, weights_from: Optional[str] = None,
                 direct: bool = False, recycle: Optional[str] = None) -> dict[str, Any]:
        return self.thaw.snapshot(path, weights=weights, weights_from=weights_from, direct=direct,
                                  recycle=recycle)

    def restore(self, path: str, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        report = self.thaw.restore(load(path, verify=False), weights=weights, requests=requests,
                                   trust_unknown_weights=trust_unknown_weights)
        return {**report, "seconds": time.perf_counter() - t0}

    def add_request(self, request_id: str, prompt_token_ids: list[int], max_tokens: int,
                    temperature: float = 0.0, seed: Optional[int] = None) -> None:
        self.engine.add_request(request_id, prompt_token_ids, max_tokens, temperature, seed)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.engine.step()

    def finish(self) -> dict[str, list[int]]:
        return self.thaw.finish_requests()
