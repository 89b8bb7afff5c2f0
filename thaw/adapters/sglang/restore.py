"""SGLang's part of the restore transaction (`thaw.core.restore`): the hooks it calls.

The steps and their order are core's; here is what they mean for SGLang's scheduler. The
snapshot's tree (with a node per in-flight request's computed tokens) gets fresh KV slots
no radix node names yet (`kv_placement.SlotPlacement`), written from the pages kept
checked on the GPU, the CUDA-registered file through the staging ring, or the verified
mapped file; the weights go through SGLang's tensor weight-update path
(`weights.WeightsLoad`); dropping the cache is `kv_placement.drop_cached`; in-flight requests
are returned for the client to resubmit (they resume from the restored KV).
"""

from __future__ import annotations

from typing import Any, Optional


from thaw.core import (CHECKPOINT_WEIGHTS, EngineUnsupported, Identity, KVLayout, PrefixTree, StateSnapshot,
                       ThawError)
from thaw.core.prefix import ROOT
from thaw.core.restore import RestoreHooks, RestorePlan

from . import capture, kv_placement
from .prepared import PreparedFiles
from .rpc import SchedulerBusy
from .engine_access import live_requests, locked_slots, running_requests
from .kv_placement import SlotPlacement
from .weights import WeightsLoad
from .scheduler_state import thaw_state


def tree_with_requests(snap: StateSnapshot) -> PrefixTree:
    """The snapshot's tree plus, for each request holding KV, a node for the part of its
    computed tokens the tree does not already hold, under the deepest node it extends."""
    tree = PrefixTree(snap.prefix.page_size, list(snap.prefix.nodes))
    for req in snap.requests:
        if not req.num_computed_tokens:
            continue
        tokens = (list(req.prompt_token_ids) + list(req.output_token_ids))[: req.num_computed_tokens]
        namespace = req.extra.get("namespace")
        matched, node = tree.match_node(tokens, namespace)
        if matched < len(tokens):
            own = namespace if node == ROOT or tree.key_of(node) != namespace else None
            tree.add(node, tokens[matched:], req.pages[matched // tree.page_size:], own)
    return tree


class SGLangRestore(RestoreHooks):
    """One restore into the SGLang scheduler `s`."""

    weights_formats = (CHECKPOINT_WEIGHTS,)  # SGLang loads checkpoint tensors only
    cache_name = "radix cache"

    def __init__(self, s: Any, files: PreparedFiles, cold_files: dict[str, bool], identity: Identity,
                 layout: KVLayout) -> None:
        self.s, self.files, self.cold_files, self.mine, self.layout = s, files, cold_files, identity, layout
        self.placement: Optional[SlotPlacement] = None
        self.engine_weights = thaw_state(s).weights

    def identity(self) -> Identity:
        return self.mine

    def kv_layout(self) -> KVLayout:
        return self.layout

    def weights_digest(self, weights_format: str) -> str:
        return self.mine.weights_digest

    def live_request_ids(self) -> list[str]:
        return [r.rid for r in live_requests(self.s)]

    def before_weights_swap(self) -> None:
        """While the scheduler still holds requests that have answered (they lock their
        prefixes and insert their KV into the tree when retired), `SchedulerBusy`, which the
        caller asks again."""
        retiring, locked = len(running_requests(self.s)), locked_slots(self.s)
        if retiring or locked:
            raise SchedulerBusy(f"SGLang's scheduler is still retiring {retiring} requests that have answered "
                                f"({locked} cached slots locked)")

    def check(self, plan: RestorePlan) -> None:
        """Resumed requests: ids not live here, no extra key `Engine.generate` cannot resubmit."""
        if not plan.resume:
            return
        live = {r.rid for r in live_requests(self.s)}
        clash = [r.request_id for r in plan.snap.requests if r.request_id in live]
        if clash:
            raise ThawError(f"requests {clash} are already live in this engine")
        for req in plan.snap.requests:  # resubmitted through Engine.async_generate, after the restore
            extra, _ = capture.decode_namespace(req.extra.get("namespace"))
            if extra is not None:
                raise EngineUnsupported(f"request {req.request_id!r} carries SGLang extra key {extra!r}, "
                                        "which Engine.generate cannot resubmit; restore with requests=False")

    def place_kv(self, plan: RestorePlan) -> Optional[SlotPlacement]:
        snap = plan.snap
        if snap.prefix is None or snap.kv is None:
            return None
        tree = tree_with_requests(snap) if plan.resume else snap.prefix
        self.placement = SlotPlacement(self.s, snap, tree, self.layout, self.files, self.cold_files,
                                       plan.reuse_cached)
        return self.placement

    def load_weights(self, plan: RestorePlan) -> WeightsLoad:
        return WeightsLoad(self.s, plan.snap, self.files, self.cold_files)

    def resume_requests(self, plan: RestorePlan, prepared: Any) -> list[dict[str, Any]]:
        """The requests, for the client to resubmit through the engine."""
        return [r.to_json() for r in plan.snap.requests]

    def drop_cached(self) -> None:
        kv_placement.drop_cached(self.s.tree_cache)

