"""Which tree core an SGLang radix cache has (legacy `RadixCache`, or `UnifiedRadixCache`
with the Python or the Rust core), and how its nodes and slots are read."""

from __future__ import annotations

from typing import Any, Optional

from .releases import component_type, internals

PYTHON_TREE_CORE = "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python"


def unified_tree(tree_cache: Any) -> bool:
    """A `UnifiedRadixCache`, not the legacy `RadixCache`."""
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    return isinstance(tree_cache, UnifiedRadixCache)


def tree_core_backend(tree_cache: Any) -> str:
    """"python" or "rust" for a unified cache ("legacy" for the legacy cache). A release
    whose unified cache has no tree core keeps its nodes in Python."""
    if not unified_tree(tree_cache):
        return "legacy"
    if not internals().tree_core:
        return "python"
    return str(getattr(tree_cache, "_tree_core_backend", "unknown"))


def walks_nodes(tree_cache: Any) -> bool:
    """Whether the tree's nodes, with their token ids, can be walked from Python."""
    return tree_core_backend(tree_cache) in ("legacy", "python")


def tree_root(tree_cache: Any) -> Any:
    """The root node of a tree that `walks_nodes`."""
    return tree_cache.tree_core.root_node if unified_tree(tree_cache) and internals().tree_core else tree_cache.root_node


def device_value(tree_cache: Any, node: Any) -> Optional[Any]:
    """The KV slot indices a node holds (the full-attention component of a unified node)."""
    if unified_tree(tree_cache):
        return node.component(component_type().FULL).value
    return node.value


def slot_walk(tree_cache: Any) -> Any:
    """The Rust core's list of every device slot in the tree, with its position and the slot
    before it (`slot_indices`, `positions`, `prev_slot_indices`)."""
    from thaw.core import EngineUnsupported

    walk = getattr(tree_cache.tree_core, "walk_for_kv_canary", None)
    if walk is None:
        import sglang

        raise EngineUnsupported(f"SGLang {sglang.__version__}'s Rust tree core has no walk_for_kv_canary, "
                                f"which thaw reads its slots with; start the engine with {PYTHON_TREE_CORE}")
    return walk(False, False)
