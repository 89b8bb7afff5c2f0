"""Names of tensor dtypes as written in snapshot headers.

Names and sizes are known without torch (``thaw inspect`` and ``thaw verify`` never import
it); the torch dtype of a name is looked up only when a tensor is made.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Union

from .errors import SchemaError

if TYPE_CHECKING:
    import torch

ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
    "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}


def check_dtype_name(name: object) -> str:
    """`name` if it is a dtype name the format knows, else SchemaError."""
    if not isinstance(name, str) or name not in ITEMSIZE:
        raise SchemaError(f"unknown dtype {name!r}; known: {sorted(ITEMSIZE)}")
    return name


@cache
def _torch_dtypes() -> dict[str, "torch.dtype"]:
    import torch

    return {name: getattr(torch, name) for name in ITEMSIZE}


def dtype_from_name(name: str) -> "torch.dtype":
    return _torch_dtypes()[check_dtype_name(name)]


def dtype_name(dtype: Union["torch.dtype", str]) -> str:
    """The header name of a torch dtype (or of a name, checked)."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in ITEMSIZE:
        raise SchemaError(f"dtype {dtype} cannot be stored in a snapshot")
    return name
