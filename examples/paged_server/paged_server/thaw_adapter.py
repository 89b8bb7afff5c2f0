"""thaw for the paged server: the whole adapter, on the `thaw.core.EngineAdapter` contract."""

from __future__ import annotations

from typing import Any


from thaw.core.checkpoint import model_config_for_digest
from thaw.core import (CHECKPOINT_WEIGHTS, Identity, IdentityMismatch, PrefixTree, RequestState,
                       check_kv_weights,
                       StateSnapshot, TensorData, ThawError, check_weights_format, config_digest,
                       convert_pages, nhd_layout)
from thaw.core.adapter import IDENTITY_FIELDS, EngineAdapter
from thaw.core.dtypes import dtype_name
from thaw.core.recut import fit_for_restore
from thaw.core.snapshot_io import weights_digest

from .engine import ROOT, PagedEngine

LAYOUT = "paged_server.nhd"  # a pool page [2, P, H, D] is K rows then V rows, token-major
MATCH = IDENTITY_FIELDS + ("page_size",)


class PagedServerAdapter(EngineAdapter):
    def __init__(self, engine: PagedEngine) -> None:
        self.engine = engine
        self.layout = nhd_layout(engine.page_size, engine.kv_heads, engine.head_dim,
                                 dtype_name(engine.dtype), name=LAYOUT)
        self._digest = "" if engine.load_format == "dummy" else self._state_digest()
        self.resumed_prior: dict[str, list[int]] = {}

    def _state_digest(self) -> str:
        return weights_digest({k: TensorData.of(v) for k, v in self.engine.model.state_dict().items()})

    def identity(self) -> Identity:
        e, cfg = self.engine, self.engine.model.config
        return Identity(
            model_architecture=(cfg.architectures or ["unknown"])[0],
            model_config_digest=config_digest(model_config_for_digest(cfg, e.model_dir)),
            weights_digest=self._digest, dtype=dtype_name(e.dtype), num_layers=e.num_layers,
            num_kv_heads=e.kv_heads, head_dim=e.head_dim, page_size=e.page_size,
            kv_layout=LAYOUT, engine="paged_server", engine_version="0.1")

    # -- capture: reads only ---------------------------------------------------------------
    def capture(self, *, weights: bool = True) -> StateSnapshot:
        e = self.engine
        if weights and not self._digest:
            raise ThawError("the server runs dummy weights and was not restored: no weights to capture")
        order = self._pages_parents_first()
        snap_page = {q: i for i, q in enumerate(order)}
        tree = PrefixTree(e.page_size)
        node_of: dict[int, int] = {}
        for q in order:
            parent, tokens = e.page_key[q]
            node_of[q] = tree.add(node_of[parent] if parent != ROOT else ROOT, list(tokens), [snap_page[q]])
        layers = [e.pool[layer, order].reshape(len(order), -1) for layer in range(e.num_layers)]
        requests = [RequestState(
            request_id=r.rid, prompt_token_ids=r.prompt, output_token_ids=r.output,
            sampling={"max_tokens": r.max_tokens, "temperature": r.temperature, "seed": r.seed},
            num_computed_tokens=len(r.pages) * e.page_size, pages=[snap_page[q] for q in r.pages],
            status="running" if r.cache is not None else "waiting") for r in e.requests.values()]
        snap = StateSnapshot.from_kv(self.layout, layers, tree, self.identity(), requests)
        if weights:
            snap.weights = {k: TensorData.of(v) for k, v in e.model.state_dict().items()}
        return snap

    def _pages_parents_first(self) -> list[int]:
        e = self.engine
        kids: dict[int, list[int]] = {}
        for q, (parent, _) in e.page_key.items():
            kids.setdefault(parent, []).append(q)
        order, stack = [], sorted(kids.get(ROOT, []))
        while stack:
            q = stack.pop()
            order.append(q)
            stack.extend(sorted(kids.get(q, [])))
        return order

    # -- restore: checks, then changes ------------------------------------------------------
    def restore(self, snapshot: StateSnapshot, *, weights: bool = True, requests: bool = True,
                trust_unknown_weights: bool = False) -> dict[str, Any]:
        e, mine = self.engine, self.identity()
        snap, recut, differences = fit_for_restore(snapshot, mine, self.layout, MATCH)
        load_weights = weights and bool(snap.weights)
        if load_weights:
            check_weights_format(snap, (CHECKPOINT_WEIGHTS,))
        if not load_weights:
            check_kv_weights(snap.identity.weights_digest, mine.weights_digest,
                             trust_unknown=trust_unknown_weights)
        state = e.model.state_dict()
        if load_weights and set(snap.weights) != set(state):
            raise IdentityMismatch("weight names", sorted(set(snap.weights) ^ set(state))[:5], "(engine's)")
        clash = [r.request_id for r in snap.requests if r.request_id in e.requests] if requests else []
        if clash:
            raise ThawError(f"requests {clash} are already live")
        plan, have = self._plan(snap.prefix) if snap.prefix else ([], {})
        shapes = {k: tuple(v.shape) for k, v in snap.weights.items()} if load_weights else {}
        bad = [k for k, shape in shapes.items() if shape != tuple(state[k].shape)]
        if bad:
            raise IdentityMismatch("weight shapes", bad[:5], "(engine's)")
        if len(plan) > len(e.free) + len(e.evictable()):
            raise ThawError(f"the snapshot needs {len(plan)} pages; {len(e.free)} free and "
                            f"{len(e.evictable())} evictable")
        named = {k: v.tensor() for k, v in snap.weights.items()} if load_weights else {}
        pages = [convert_pages(layer.tensor(), snap.kv.layout, self.layout) for layer in snap.kv.layers] \
            if plan else []
        # -- nothing above changed the engine; from here on it changes
        if named:
            e.model.load_state_dict(named, strict=True)
            self._digest = snap.identity.weights_digest
        slots = e.allocate(len(plan))
        for slot, (_, _, src) in zip(slots, plan):
            for layer in range(e.num_layers):
                e.pool[layer, slot] = pages[layer][src].reshape(e.pool.shape[2:])
        server_page = dict(have)
        for slot, (parent, tokens, src) in zip(slots, plan):
            server_page[src] = e.publish(server_page[parent], tokens, slot)
        resumed = self._resume(snap.requests) if requests else []
        return {"pages_written": len(plan), "weights_restored": len(named), "requests": resumed,
                "kv_bytes": snap.kv.nbytes if snap.kv else 0,
                "identity_differences": differences,
                "recut": recut.to_json() if recut else None}

    def _plan(self, tree: PrefixTree) -> tuple[list[tuple[int, tuple, int]], dict[int, int]]:
        """Snapshot pages the index lacks, parents first, as (parent snapshot page or ROOT,
        tokens, snapshot page); and snapshot page -> server page for those it already has."""
        e, p = self.engine, tree.page_size
        plan, planned, have = [], set(), {ROOT: ROOT}
        for _, tokens, pages in tree.walk():
            parent = ROOT
            for j, page in enumerate(pages):
                if page not in have and page not in planned:
                    span = tuple(tokens[j * p:(j + 1) * p])
                    cached = e.index.get((have[parent], span)) if parent in have else None
                    if cached is not None:
                        have[page] = cached
                    else:
                        plan.append((parent, span, page))
                        planned.add(page)
                parent = page
        return plan, have

    def _resume(self, reqs: list[RequestState]) -> list[str]:
        for r in reqs:
            s = r.sampling
            self.engine.add_request(r.request_id, r.prompt_token_ids + r.output_token_ids,
                                    max(1, s["max_tokens"] - len(r.output_token_ids)),
                                    s["temperature"], s["seed"])
            self.resumed_prior[r.request_id] = list(r.output_token_ids)
        return [r.request_id for r in reqs]

    def finish_requests(self) -> dict[str, list[int]]:
        done = self.engine.run()
        return {rid: self.resumed_prior.pop(rid, []) + r.output for rid, r in done.items()}


def attach(engine: PagedEngine) -> PagedServerAdapter:
    return PagedServerAdapter(engine)
