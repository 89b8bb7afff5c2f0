"""The checkpoint an engine loaded its weights from, read back for a snapshot.

Engines may repack weights after loading (vLLM's CPU backend moves linear weights into
oneDNN), so adapters snapshot the checkpoint's own tensors, by checkpoint name, and give
them back through the engine's weight-loading path on restore.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import weakref
from typing import Any

import torch

from .errors import ThawError
from .schema import config_digest

# Config keys that differ between two loads of the same model (paths, library versions,
# the dtype the caller asked for, which the identity records separately).
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype")


# Dict-valued config keys in which `type` is the legacy spelling of `rope_type`; one engine
# adds the alias (SGLang 0.5.21) and another does not (vLLM 0.32), for the same model.
ROPE_KEYS = ("rope_scaling", "rope_parameters")


def model_config_for_digest(hf_config: Any, model_dir: str) -> dict:
    """The model's config as both engines see it: the engine's config object restricted to
    the keys its config class defines and the checkpoint's config.json names (engines add
    their own attributes to the object), load-specific keys dropped, aliases spelled one way."""
    known = _known_keys(type(hf_config), model_dir)
    out = {k: v for k, v in hf_config.to_dict().items() if k in known and k not in VOLATILE_CONFIG_KEYS}
    for key in ROPE_KEYS:
        rope = out.get(key)
        if isinstance(rope, dict) and "type" in rope and rope.get("rope_type", rope["type"]) == rope["type"]:
            out[key] = {**{k: v for k, v in rope.items() if k != "type"}, "rope_type": rope["type"]}
    return out


_CONFIG_DIGESTS: dict[tuple[int, str], tuple[weakref.ref, str]] = {}


def model_config_digest(hf_config: Any, model_dir: str) -> str:
    """`config_digest(model_config_for_digest(hf_config, model_dir))`, computed once per
    config object and directory: an engine builds its config object at boot and keeps it
    (the restore path asks on every restore; serialising the config costs most of a
    millisecond). A config object that is gone frees its entry's number for reuse."""
    key = (id(hf_config), model_dir)
    held = _CONFIG_DIGESTS.get(key)
    if held is not None and held[0]() is hf_config:
        return held[1]
    digest = config_digest(model_config_for_digest(hf_config, model_dir))
    _CONFIG_DIGESTS[key] = (weakref.ref(hf_config, lambda _: _CONFIG_DIGESTS.pop(key, None)), digest)
    return digest


@functools.lru_cache(maxsize=64)
def _known_keys(config_cls: type, model_dir: str) -> frozenset:
    """Keys the config class defines plus those config.json names (built once per engine:
    constructing a default config costs tens of milliseconds, too much for every restore)."""
    known = set(config_cls().to_dict())
    config_file = os.path.join(model_dir, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            known |= set(json.load(f))
    return frozenset(known)


class NoCheckpoint(ThawError):
    """The engine has no real weights to read back (dummy weights, or no local safetensors
    checkpoint, and no restore with weights): its weights digest is unknown."""


def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a local model directory (empty if there are none)."""
    return sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))) if os.path.isdir(model_dir) else []


def read_checkpoint(model_dir: str, *, dummy: bool) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint; refuses when the engine runs on dummy weights or has
    no local safetensors checkpoint, since there are then no real weights to capture."""
    from safetensors.torch import load_file

    if dummy:
        raise NoCheckpoint("the engine was started with load_format='dummy' (random weights) and "
                        "has not been restored from a snapshot with weights, so there are no "
                        "real weights to capture")
    files = checkpoint_files(model_dir)
    if not files:
        raise NoCheckpoint(f"the engine's model {model_dir!r} is not a local safetensors checkpoint "
                        "and the engine has not been restored from a snapshot with weights, so "
                        "there are no weights to capture")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out



