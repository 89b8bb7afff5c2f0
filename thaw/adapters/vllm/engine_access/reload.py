"""vLLM's in-place weight reload (`reload_weights` of the model runner), and undoing what a
reload that failed partway leaves behind.

vLLM 0.32 reloads layer by layer (`model_loader.reload.layerwise`): each layer's tensors are
set aside, the layer is put on the meta device, and the weights given for it are buffered
until the layer has all of them, then loaded and copied into the set-aside tensors. A load
that raises midway leaves the layers it had not finished on the meta device with their
buffered (failed) weights, and every later reload replays those and fails again.
`abandon_partial_reload` puts each unfinished layer's own tensors back and forgets its
buffer: the model then holds the new weights in the layers that finished and the old ones
elsewhere (the caller reports that mix), and the next reload runs from a clean state. A
release without layerwise reloading keeps no such state and has nothing to undo.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch

LAYERWISE = "vllm.model_executor.model_loader.reload.layerwise"


def reload_checkpoint_tensors(reload: Any, model: torch.nn.Module, weights: list[tuple[str, torch.Tensor]]) -> None:
    """`reload(weights_iterator=weights)` (a runner's or worker's `reload_weights`); if it
    raises, `abandon_partial_reload(model)` before the error propagates."""
    try:
        reload(weights_iterator=weights)
    except BaseException:
        abandon_partial_reload(model)
        raise


def abandon_partial_reload(model: torch.nn.Module) -> int:
    """Puts back the own tensors of every layer a failed layerwise reload left unfinished
    (see the module docstring); returns how many layers."""
    if importlib.util.find_spec(LAYERWISE) is None:
        return 0
    layerwise = importlib.import_module(LAYERWISE)
    undone = 0
    for layer in model.modules():
        info = layerwise.LAYERWISE_INFO.get(layer)
        if info is None or not info.can_load():
            continue  # never set up, or finished and reset
        if info.kernel_tensors is not None:
            layerwise._place_kernel_tensors(layer, info)
        for tensor in layerwise.get_layer_tensors(layer).values():
            tensor.weight_loader = layerwise._get_original_loader(tensor)
        info.reset()
        undone += 1
    layerwise.LOADING_LAYERS.clear()
    if hasattr(model, "_original_do_torchao_reload"):
        model._do_torchao_reload = model._original_do_torchao_reload
    return undone
