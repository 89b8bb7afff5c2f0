"""Tensor payloads that live either in memory or in a section of an open snapshot file."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Optional

import numpy as np

from .dtypes import ITEMSIZE, dtype_from_name, dtype_name
from .errors import SchemaError

if TYPE_CHECKING:
    import torch

    from .container import Container


def readonly_tensor(array: np.ndarray) -> "torch.Tensor":
    """A torch view of a read-only numpy array (e.g. a file mapping); callers must not write."""
    import torch

    with warnings.catch_warnings():  # read-only on purpose; torch warns about it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class TensorData:
    """A tensor's dtype and shape, with its bytes in memory or in a verified file section.

    File-backed data is read only when asked for, straight into the caller's buffer when
    :meth:`read_into` is used; every chunk's CRC32C is checked on the way. The dtype is
    held by name: describing file-backed data needs no torch.
    """

    def __init__(self, dtype: "torch.dtype | str", shape: tuple[int, ...], *,
                 tensor: Optional["torch.Tensor"] = None,
                 container: Optional["Container"] = None, section: Optional[str] = None) -> None:
        self.dtype_name = dtype_name(dtype)
        self.shape = tuple(int(s) for s in shape)
        self._tensor = tensor
        self._container = container
        self._section = section

    @classmethod
    def of(cls, tensor: "torch.Tensor") -> "TensorData":
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return cls(t.dtype, tuple(t.shape), tensor=t.contiguous())  # refuses dtypes without a name

    @classmethod
    def in_place(cls, tensor: "torch.Tensor") -> "TensorData":
        """`tensor` held where it is, not copied (a CUDA tensor stays on its device): for a
        snapshot written at once while nothing changes the tensor (`device_stage`)."""
        t = tensor.detach()
        return cls(t.dtype, tuple(t.shape), tensor=t.contiguous())

    @property
    def dtype(self) -> "torch.dtype":
        return dtype_from_name(self.dtype_name)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype_name]

    @property
    def in_memory(self) -> bool:
        return self._tensor is not None

    @property
    def section_name(self) -> Optional[str]:
        """The file section holding the data; None for in-memory data."""
        return None if self._tensor is not None else self._section

    @property
    def container(self) -> Optional["Container"]:
        """The open snapshot file holding the data; None for in-memory data."""
        return None if self._tensor is not None else self._container

    def load(self) -> "TensorData":
        """Reads file-backed data into memory (verified) and keeps it there; returns self."""
        self._tensor = self.tensor()
        return self

    def tensor(self) -> "torch.Tensor":
        """The data as a CPU tensor: the in-memory one, or a fresh copy read and verified
        from the file on each call. File-backed data is never cached here, so a snapshot
        kept open (a server restoring it again and again) holds no host copy of its
        weights or KV; keep the returned tensor where it is needed again."""
        if self._tensor is not None:
            return self._tensor
        import torch

        out = torch.empty(self.shape, dtype=self.dtype)
        self.read_into(out)
        return out

    def read_into(self, out: "torch.Tensor") -> None:
        """Copies the data into `out`, a contiguous CPU tensor of the same dtype and shape."""
        if out.dtype != self.dtype or tuple(out.shape) != self.shape:
            raise SchemaError(
                f"buffer is {out.dtype}{tuple(out.shape)}, data is {self.dtype}{self.shape}"
                + (f" (section {self._section!r})" if self._section else "")
            )
        if self._tensor is not None:
            out.copy_(self._tensor)
        else:
            assert self._container is not None and self._section is not None
            self._container.read_into(self._section, out)

    def mapped(self) -> "torch.Tensor":
        """The data without copying where possible: the in-memory tensor, or a verified,
        read-only view of the file's pages (valid while the snapshot's file stays open).
        Callers must not write to it."""
        if self._tensor is not None:
            return self._tensor
        assert self._container is not None and self._section is not None
        raw = readonly_tensor(self._container.map_section(self._section))
        if raw.numel():
            return raw.view(self.dtype).reshape(self.shape)
        import torch

        return torch.empty(self.shape, dtype=self.dtype)

    def raw_bytes_view(self) -> "torch.Tensor":
        """The in-memory tensor as a contiguous tensor, ready to be written (on its
        device for `in_place` data, else in host memory)."""
        return self.tensor().contiguous()

    def __repr__(self) -> str:
        where = "memory" if self._tensor is not None else f"section {self._section!r}"
        return f"TensorData({self.dtype_name}{list(self.shape)} in {where})"
