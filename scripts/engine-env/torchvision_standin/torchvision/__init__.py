"""Import-only stand-in for torchvision in the CPU engine environment.

SGLang 0.5.21 imports a few torchvision names while importing its engine (multimodal
helpers), and PyPI's torchvision wheels do not load beside the CPU build of torch 2.13
(`operator torchvision::nms does not exist`). This package satisfies those imports and
nothing more: every function raises, so image inputs fail loudly instead of silently.
It is installed only into the environment `scripts/setup.sh --engines` creates.
"""

import enum
import sys
import types

__version__ = "0.0.0"


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision is an import-only stand-in in this environment; "
                       "image inputs are not supported")


def _module(name: str, **names) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(names)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _unavailable

    mod.__getattr__ = __getattr__
    sys.modules[name] = mod
    return mod


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


transforms = _module("torchvision.transforms", InterpolationMode=InterpolationMode)
transforms.functional = _module("torchvision.transforms.functional", InterpolationMode=InterpolationMode)
transforms.v2 = _module("torchvision.transforms.v2")
transforms.v2.functional = _module("torchvision.transforms.v2.functional", InterpolationMode=InterpolationMode)
io = _module("torchvision.io")
ops = _module("torchvision.ops")
models = _module("torchvision.models")
datasets = _module("torchvision.datasets")
utils = _module("torchvision.utils")
