"""Builds a StateSnapshot from a live vLLM engine (called with the engine idle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from thaw.core import EngineUnsupported, PagedKV, PrefixTree, RequestState, StateSnapshot, TensorData

from .engine_access import (NO_FRONT, EngineParts, cached_blocks, external_request_id, in_flight_requests,
                            queued_requests, request_block_ids, uncarried_request_features)
from .recorder import BlockTokenRecorder
from .worker_ops import gather_pages

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "min_tokens",
                   "stop_token_ids", "ignore_eos", "presence_penalty", "frequency_penalty",
                   "repetition_penalty")


@dataclass
class CaptureReport:
    cached_blocks: int = 0
    captured_blocks: int = 0
    unknown_blocks: list[int] = field(default_factory=list)  # cached before attach
    orphan_blocks: list[int] = field(default_factory=list)  # parent block no longer cached
    unsupported_blocks: list[int] = field(default_factory=list)  # LoRA / multimodal keys
    requests: int = 0
    kv_route: str = ""  # where the KV was gathered: "device", "pinned host" or "host" (`gather_kv`)
    seconds: dict[str, float] = field(default_factory=dict)  # by phase: capture, write, flush, ...

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def capture_prefix(parts: EngineParts, recorder: BlockTokenRecorder,
                   report: CaptureReport) -> tuple[PrefixTree, list[int], dict[bytes, int]]:
    """The token-keyed tree over every cached block whose tokens are known.

    Returns the tree, the engine block id of each snapshot page, and hash -> page.
    """
    cached = cached_blocks(parts.block_pool)
    recorder.prune(set(cached))
    report.cached_blocks = len(cached)
    children: dict[bytes | None, list[bytes]] = {}
    for h, blk in cached.items():
        rec = recorder.records.get(h)
        if rec is None:
            report.unknown_blocks.append(blk.block_id)
        elif not rec.supported:
            report.unsupported_blocks.append(blk.block_id)
        elif rec.parent is not None and rec.parent not in cached:
            report.orphan_blocks.append(blk.block_id)
        else:
            children.setdefault(rec.parent, []).append(h)
    tree = PrefixTree(parts.block_size)
    block_ids: list[int] = []
    page_of: dict[bytes, int] = {}
    frontier: list[tuple[bytes | None, int]] = [(None, -1)]
    while frontier:  # breadth first: parents before children
        nxt = []
        for parent_hash, parent_node in frontier:
            for h in sorted(children.get(parent_hash, []), key=lambda x: recorder.records[x].tokens):
                rec = recorder.records[h]
                page = len(block_ids)
                block_ids.append(cached[h].block_id)
                page_of[h] = page
                node = tree.add(parent_node, list(rec.tokens), [page], rec.extra_key)
                nxt.append((h, node))
        frontier = nxt
    report.captured_blocks = len(block_ids)
    return tree, block_ids, page_of


def gather_kv(parts: EngineParts, block_ids: list[int], *, for_writer: bool = False) -> tuple[list[torch.Tensor], str]:
    """[num_pages, page_elems] copies of the listed blocks, one per layer, and where they
    are. On CUDA one gather kernel over every layer, in each block's physical order (what
    the layout describes): with `for_writer` (the file writer copies them out before the
    engine runs again) and room on the device, into device memory ("device": the writer
    moves it to the host piece by piece while it writes), else straight into pinned host
    memory ("pinned host"); a CPU engine's are copied on the host ("host")."""
    elems = parts.layout.page_elems
    if not (parts.on_cuda and block_ids):
        return gather_pages(parts.kv_caches, block_ids, elems), "host"
    from thaw.core.gpu import PagePlan, room_for

    device = parts.kv_caches[0].device
    plan = PagePlan(parts.kv_caches, torch.tensor(block_ids, dtype=torch.long, device=device))
    route = "device" if for_writer and room_for(device, plan.packed_bytes) else "pinned host"
    packed = torch.empty(plan.packed_bytes, dtype=torch.uint8, device=device if route == "device" else "cpu",
                         pin_memory=route != "device")
    plan.gather(packed)
    if route != "device":
        torch.cuda.current_stream().synchronize()
    pages = packed.view(parts.kv_caches[0].dtype).view(len(parts.kv_caches), len(block_ids), elems)
    return list(pages.unbind(0)), route


def check_requests_carried(parts: EngineParts) -> None:
    """Refuses, naming the request and feature, a snapshot that would resume any in-flight
    request differently (stop strings, logprobs, logit bias, structured output, n, LoRA,
    multimodal inputs, ...): thaw carries exactly SAMPLING_FIELDS, nothing approximately."""
    for req in in_flight_requests(parts):
        lost = uncarried_request_features(parts, req, SAMPLING_FIELDS)
        if lost:
            raise EngineUnsupported(
                f"in-flight request {external_request_id(parts, req.request_id)!r} uses {', '.join(lost)}, "
                f"which a snapshot does not carry (it carries {', '.join(SAMPLING_FIELDS)}); finish or abort "
                "it before the snapshot, or snapshot with requests=False")


def capture_requests(parts: EngineParts, page_of_block: dict[int, int]) -> list[RequestState]:
    out = []
    for status, req in queued_requests(parts):
        sp = req.sampling_params
        sampling = {f: getattr(sp, f) for f in SAMPLING_FIELDS}
        sampling["stop_token_ids"] = list(sampling["stop_token_ids"] or [])
        block_ids = request_block_ids(parts, req.request_id)
        out.append(RequestState(
            request_id=external_request_id(parts, req.request_id),
            prompt_token_ids=list(req.prompt_token_ids),
            output_token_ids=list(req.output_token_ids),
            sampling=sampling,
            num_computed_tokens=req.num_computed_tokens if status == "running" else 0,
            pages=[page_of_block[b] for b in block_ids if b in page_of_block],
            status=status,
            extra={"cache_salt": req.cache_salt},
        ))
    return out


def capture_index(parts: EngineParts, recorder: BlockTokenRecorder, *,
                  requests: bool = True) -> tuple[PrefixTree, list[int], list[RequestState], CaptureReport]:
    """What the core holds: the prefix tree, the block of each snapshot page, and the
    in-flight requests when `requests` (each must be carried exactly, else
    EngineUnsupported before anything is copied)."""
    if requests:
        if parts.front is None and in_flight_requests(parts):
            raise EngineUnsupported(f"{len(in_flight_requests(parts))} requests are in flight and {NO_FRONT}; "
                                    "snapshot with requests=False to leave them out")
        check_requests_carried(parts)
    report = CaptureReport()
    tree, block_ids, _ = capture_prefix(parts, recorder, report)
    page_of_block = {b: i for i, b in enumerate(block_ids)}
    in_flight = capture_requests(parts, page_of_block) if requests else []
    report.requests = len(in_flight)
    return tree, block_ids, in_flight, report


def capture(parts: EngineParts, recorder: BlockTokenRecorder, identity,
            weights: dict[str, torch.Tensor] | None, *, requests: bool = True,
            for_writer: bool = False) -> tuple[StateSnapshot, CaptureReport]:
    """The engine's state in memory (KV copied out of an in-core worker), weights and KV
    in host memory; with `for_writer` (a snapshot written to a file before the engine runs
    again) CUDA weights are held where they are and the KV is gathered on the device where
    it has room (`gather_kv`): the file writer copies them out while it writes."""
    if parts.workers is not None:
        raise EngineUnsupported("this engine's KV lives in a worker process: snapshot it to a file "
                                "(snapshot(path)), which the worker writes itself")
    tree, block_ids, in_flight, report = capture_index(parts, recorder, requests=requests)
    layers, report.kv_route = gather_kv(parts, block_ids, for_writer=for_writer)
    held = TensorData.in_place if for_writer else TensorData.of
    snap = StateSnapshot(
        identity=identity,
        weights={k: held(v) for k, v in (weights or {}).items()},
        kv=PagedKV(parts.layout, [held(t) for t in layers]),
        prefix=tree,
        requests=in_flight,
        extras={"vllm": {"capture": report.to_json()}},
    )
    snap.validate()
    return snap, report
