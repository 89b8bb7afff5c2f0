"""vLLM's part of the restore transaction (`thaw.core.restore`): the hooks it calls.

The steps and their order are core's; here is what they mean for vLLM. The KV pages get
the target engine's own block hashes (`derive_hashes`, checked against vLLM's hasher) and
go into fresh blocks through the placement chosen for where the KV lives
(`kv_placement.choose_placement`); the weights through `weights.WeightsLoad`; dropping the
cache is `PoolEdit.drop_cached`; in-flight requests are re-queued through the engine's
front (`RequestFront`), aborted again if one is refused.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from thaw.core import EngineUnsupported, KVLayout, RequestState, SchemaError, StateSnapshot, ThawError
from thaw.core.engine_weights import EngineWeights
from thaw.core.restore import RestoreHooks, RestorePlan

from .engine_access import (NO_FRONT, EngineParts, PoolEdit, block_hasher, engine_block_hashes, engine_identity,
                            external_request_id, in_flight_requests, request_rejections)
from .kv_placement import BlockPlacement, RestoreReport, choose_placement
from .prepared import PreparedFiles
from .recorder import BlockTokenRecorder
from .weights import FORMATS, WeightsLoad



class BoundHandle(Protocol):
    """What a restore uses of the `VLLMHandle` it runs for (the engine, its weights' state)."""

    parts: EngineParts
    recorder: BlockTokenRecorder
    files: PreparedFiles
    weights: EngineWeights

    def weights_digest(self, weights_format: Optional[str] = None) -> str: ...

Prepared = list[tuple[str, dict[str, Any], Any, list[int]]]


def _salt(extra_key: Optional[str], node: int) -> Optional[str]:
    if extra_key is None:
        return None
    if extra_key.startswith("cache_salt:"):
        return extra_key[len("cache_salt:"):]
    raise EngineUnsupported(f"prefix node {node}: extra key {extra_key!r} has no vLLM equivalent here")


def derive_hashes(parts: EngineParts, snap: StateSnapshot) -> list[bytes]:
    """The target engine's own block hash for every snapshot page (same order as pages)."""
    tree = snap.prefix
    bs = tree.page_size
    hash_block = block_hasher(parts)
    page_hash: dict[int, bytes] = {}
    last_hash: dict[int, bytes] = {}
    for i, node in enumerate(tree.nodes):
        parent = last_hash.get(node.parent) if node.parent >= 0 else None
        salt = _salt(tree.key_of(i), i) if node.parent < 0 else None
        for k, page in enumerate(node.pages):
            extra = (("cache_salt", salt),) if salt and k == 0 and node.parent < 0 else None
            parent = hash_block(parent, node.tokens[k * bs:(k + 1) * bs], extra)
            page_hash[page] = parent
        last_hash[i] = parent
    return [page_hash[p] for p in range(len(page_hash))]


def check_hasher_agrees(parts: EngineParts, snap: StateSnapshot, hashes: list[bytes]) -> None:
    """Guards against silent zero hits: our derivation must equal the engine's own hasher."""
    for leaf in snap.prefix.leaves()[:1]:
        tokens, pages = snap.prefix.path(leaf)
        engine = engine_block_hashes(parts, tokens, _salt(snap.prefix.key_of(leaf), leaf))[:len(pages)]
        if engine != [hashes[p] for p in pages]:
            raise EngineUnsupported("this vLLM derives block hashes differently from thaw's "
                                    "derivation; refusing a restore that would never be hit")


def prepare_requests(requests: list[RequestState]) -> Prepared:
    """(id, prompt, SamplingParams, output so far) for each in-flight request, built before
    anything changes: a request vLLM would not accept is refused here, by name."""
    from vllm import SamplingParams

    out = []
    for req in requests:
        sampling = dict(req.sampling)
        produced = len(req.output_token_ids)
        try:
            sampling["max_tokens"] = max(1, sampling["max_tokens"] - produced)
            sampling["min_tokens"] = max(0, sampling.get("min_tokens", 0) - produced)
            params = SamplingParams(**sampling)
        except request_rejections() as exc:
            raise SchemaError(f"request {req.request_id!r}: sampling settings vLLM does not accept "
                              f"({type(exc).__name__}: {exc})") from None
        prompt: dict[str, Any] = {"prompt_token_ids": list(req.prompt_token_ids) + list(req.output_token_ids)}
        if req.extra.get("cache_salt"):
            prompt["cache_salt"] = req.extra["cache_salt"]
        out.append((req.request_id, prompt, params, list(req.output_token_ids)))
    return out


class VLLMRestore(RestoreHooks):
    """One restore into the engine a `VLLMHandle` is bound to; the report fills as it runs."""

    weights_formats = FORMATS
    cache_name = "prefix cache"

    def __init__(self, handle: BoundHandle, snap: StateSnapshot, report: RestoreReport) -> None:
        self.handle, self.parts, self.report = handle, handle.parts, report
        self.weights_format = snap.weights_format
        self.engine_weights = handle.weights

    def identity(self) -> Any:
        # Only a digest already known goes into the identity compared (the comparison reports
        # differences); the weights check computes the one it needs (`weights_digest`).
        return engine_identity(self.parts, self.handle.weights.digests.get(self.weights_format, ""))

    def kv_layout(self) -> KVLayout:
        return self.parts.layout

    def weights_digest(self, weights_format: str) -> str:
        return self.handle.weights_digest(weights_format)

    def live_request_ids(self) -> list[str]:
        return [external_request_id(self.parts, r.request_id) for r in in_flight_requests(self.parts)]

    def check(self, plan: RestorePlan) -> None:
        """Resumed requests need the engine's front and ids it does not run already."""
        snap = plan.snap
        if not plan.resume or not snap.requests:
            return
        if self.parts.front is None:
            raise EngineUnsupported(f"the snapshot holds {len(snap.requests)} in-flight requests and {NO_FRONT}; "
                                    "restore with requests=False to leave them out")
        clash = [r.request_id for r in snap.requests if r.request_id in self.parts.front.live_ids()]
        if clash:
            raise ThawError(f"requests {clash} are already running in this engine")

    def place_kv(self, plan: RestorePlan) -> Optional[BlockPlacement]:
        snap = plan.snap
        self.report.pages_in_snapshot = snap.kv.num_pages if snap.kv else 0
        if snap.prefix is None or not snap.prefix.nodes:
            return None
        hashes = derive_hashes(self.parts, snap)
        check_hasher_agrees(self.parts, snap, hashes)
        files = self.handle.files
        return choose_placement(self.parts, snap, hashes, self.report, self.handle.recorder,
                                reuse_cached=plan.reuse_cached, registry=files.registered,
                                resident_kv=files.resident_kv)

    def load_weights(self, plan: RestorePlan) -> WeightsLoad:
        load = WeightsLoad(self.parts, plan.snap, self.handle.files.registered)
        self.report.weights_format, self.report.weights_bytes = plan.snap.weights_format, load.bytes
        return load

    def prepare_requests(self, plan: RestorePlan) -> Prepared:
        return prepare_requests(plan.snap.requests)

    def resume_requests(self, plan: RestorePlan, prepared: Prepared) -> dict[str, list[int]]:
        """Re-queues in-flight requests (their KV prefix is found in the restored cache). If
        one is refused, those already queued are aborted before the error propagates."""
        done: dict[str, list[int]] = {}
        try:
            for request_id, prompt, params, output in prepared:
                self.parts.front.add_request(request_id, prompt, params)
                done[request_id] = output
        except BaseException:
            if done:
                self.parts.front.abort(list(done))
            raise
        self.report.requests_resumed.extend(done)
        return done

    def drop_cached(self) -> None:
        PoolEdit(self.parts.block_pool, []).drop_cached()
