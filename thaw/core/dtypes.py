"""Names of tensor dtypes as written in snapshot headers."""

from __future__ import annotations

import torch

from .errors import SchemaError

_BY_NAME: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
}
_BY_DTYPE = {v: k for k, v in _BY_NAME.items()}


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise SchemaError(f"unknown dtype {name!r}; known: {sorted(_BY_NAME)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise SchemaError(f"dtype {dtype} cannot be stored in a snapshot") from None
