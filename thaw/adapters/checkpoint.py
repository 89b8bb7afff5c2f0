"""The checkpoint an engine loaded its weights from, read back for a snapshot.

Engines may repack weights after loading (vLLM's CPU backend moves linear weights into
oneDNN), so adapters snapshot the checkpoint's own tensors, by checkpoint name, and give
them back through the engine's weight-loading path on restore.
"""

from __future__ import annotations

import glob
import os

import torch

from thaw.core import ThawError

# Config keys that differ between two loads of the same model (paths, library versions,
# the dtype the caller asked for, which the identity records separately).
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype")


def model_config_for_digest(hf_config: dict) -> dict:
    return {k: v for k, v in hf_config.items() if k not in VOLATILE_CONFIG_KEYS}


def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a local model directory (empty if there are none)."""
    return sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))) if os.path.isdir(model_dir) else []


def read_checkpoint(model_dir: str, *, dummy: bool) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint; refuses when the engine runs on dummy weights or has
    no local safetensors checkpoint, since there are then no real weights to capture."""
    from safetensors.torch import load_file

    if dummy:
        raise ThawError("the engine was started with load_format='dummy' (random weights) and "
                        "has not been restored from a snapshot with weights, so there are no "
                        "real weights to capture")
    files = checkpoint_files(model_dir)
    if not files:
        raise ThawError(f"the engine's model {model_dir!r} is not a local safetensors checkpoint "
                        "and the engine has not been restored from a snapshot with weights, so "
                        "there are no weights to capture")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out



