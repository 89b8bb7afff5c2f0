"""A vLLM engine's weights in a snapshot, in one of two formats, and the way back in.

- ``checkpoint``: tensors named and shaped as in the model's checkpoint files, which any
  engine can load; vLLM takes them through its own reload path, which re-applies its
  loader's processing. The only format on vLLM's CPU backend, which repacks linear weights
  for its kernels so that they cannot be read back from the model.
- ``vllm.parameters`` (`PARAMETERS_FORMAT`): the model's parameters as loaded (after
  vLLM's processing), by parameter name, read straight from a CUDA engine and written
  straight back into another one's parameters with no loader in between. The target's
  parameter names, dtypes and shapes must equal the snapshot's; other engines refuse it.

`WeightsLoad` splits a restore in three steps so that the restore can keep its order
(checks, then every byte verified, then the engine changed): construction checks and
changes nothing, `stage` reads and verifies without touching the engine, `commit` writes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from thaw.core import CHECKPOINT_WEIGHTS, EngineUnsupported, IdentityMismatch, StateSnapshot
from thaw.core.gpu import room_for
from thaw.core.residency import COLD_BELOW, resident_fraction
from thaw.core.snapshot_io import digest_of
from thaw.core.weights_staging import stage_checkpoint

from .engine_access import EngineParts, model_parameters, reload_weights

PARAMETERS_FORMAT = "vllm.parameters"
FORMATS = (CHECKPOINT_WEIGHTS, PARAMETERS_FORMAT)


def parameters(parts: EngineParts) -> dict[str, torch.Tensor]:
    """The model's parameters by name, as the engine runs them."""
    return model_parameters(parts)


def native_format(parts: EngineParts) -> str:
    """The format this engine snapshots by default: its parameters where it runs on CUDA."""
    return PARAMETERS_FORMAT if parts.on_cuda else CHECKPOINT_WEIGHTS


def check_format(parts: EngineParts, fmt: str) -> None:
    """Refuses a weight format this engine cannot capture or load, naming why."""
    if fmt not in FORMATS:
        raise IdentityMismatch("weights_format", fmt, " or ".join(FORMATS))
    if fmt == PARAMETERS_FORMAT and parts.workers is not None:
        raise EngineUnsupported(
            "weights as vLLM parameters are read and written where the engine core holds the model; "
            f"this engine's model runs in worker processes (one shard per rank): use {CHECKPOINT_WEIGHTS!r}, "
            "which vLLM's loader shards itself")
    if fmt == PARAMETERS_FORMAT and not parts.on_cuda:
        raise EngineUnsupported(
            "weights as vLLM parameters need a CUDA engine: vLLM's CPU backend repacks linear "
            f"weights for its kernels, so its parameters are not the loaded values; use {CHECKPOINT_WEIGHTS!r}")


def parameters_digest(params: dict[str, torch.Tensor]) -> str:
    """The weights digest of CUDA parameters, with their CRC32Cs computed on the device."""
    from thaw.core.gpu import device_crc32c

    return digest_of((name, p.dtype, tuple(p.shape), device_crc32c(p.contiguous()))
                     for name, p in params.items())


def _check_parameters_match(snap: StateSnapshot, params: dict[str, torch.Tensor]) -> None:
    only_snap, only_engine = sorted(set(snap.weights) - set(params)), sorted(set(params) - set(snap.weights))
    if only_snap or only_engine:
        raise IdentityMismatch("weight parameters", {"only in the snapshot": only_snap[:5]},
                               {"only in the engine": only_engine[:5]})
    for name, data in snap.weights.items():
        p = params[name]
        if (data.dtype, data.shape) != (p.dtype, tuple(p.shape)):
            raise IdentityMismatch(f"parameter {name!r}", f"{data.dtype}{list(data.shape)}",
                                   f"{p.dtype}{list(p.shape)}")
        if not p.is_contiguous():
            raise EngineUnsupported(f"parameter {name!r} is not contiguous; thaw writes parameters whole")


class WeightsLoad:
    """One restore's weights: checked at construction, then `stage`, then `commit`.

    Routes (reported as `route`):
      checkpoint/...         checkpoint tensors staged as `thaw.core.weights_staging` chooses
                             (on the GPU from the registered or streamed file, else on the
                             host), then vLLM's reload path;
      checkpoint/worker      (the model runs in a worker process) the worker reads and checks
                             the tensors from the file, then reloads them itself;
      parameters/gpu-staged  every parameter copied from the registered file into one GPU
                             staging buffer and checked there; commit is a device copy;
      parameters/gpu-streamed  (the file is mostly outside the page cache) the same staging,
                             filled by O_DIRECT reads checked on the host as they land;
      parameters/host-verified  (too little free GPU memory to stage) the file's bytes are
                             checked on the host first, then copied into the parameters and
                             checked again there as they land;
      parameters/host        an in-memory snapshot: host tensors copied into the parameters.
    """

    def __init__(self, parts: EngineParts, snap: StateSnapshot,
                 registry: Callable[[Any], Any]) -> None:
        check_format(parts, snap.weights_format)  # (core checked it is one of FORMATS)
        self.parts, self.snap = parts, snap
        self.bytes = sum(d.nbytes for d in snap.weights.values())
        on_gpu = parts.on_cuda
        held_in = snap.weights_source  # the snapshot's file, or the one its weights are referenced from
        from_file = held_in is not None
        mappable = on_gpu and from_file and held_in.is_local and parts.workers is None
        self.resident = resident_fraction(held_in.path) if mappable else None
        # A file mostly outside the page cache is streamed from the disk (O_DIRECT) when the
        # GPU can hold the staging; registering it would fault it in a page at a time.
        self.cold = self.resident is not None and self.resident < COLD_BELOW
        self.container, self.registry = held_in, registry
        self.params: dict[str, torch.Tensor] = {}
        self.registered, self.streamed = None, False
        self.route: str = "checkpoint"  # the checkpoint's route is named by `stage`
        if snap.weights_format == PARAMETERS_FORMAT:
            self.streamed = self.cold and room_for(parts.kv_caches[0].device, self.bytes)
            self.registered = registry(held_in) if mappable and not self.streamed else None
            self.params = parameters(parts)
            _check_parameters_match(snap, self.params)
            if self.streamed:
                self.route = "parameters/gpu-streamed"
            elif self.registered is None:
                self.route = "parameters/host"
            elif room_for(parts.kv_caches[0].device, self.bytes):
                self.route = "parameters/gpu-staged"
            else:
                self.route = "parameters/host-verified"
        elif parts.workers is not None:
            if not from_file:
                raise EngineUnsupported("this engine's weights live in a worker process, which reads the "
                                        "snapshot file itself: restore them from a file")
            self.route = "checkpoint/worker"
        self._staged: dict[str, torch.Tensor] = {}
        self._staging: Optional[torch.Tensor] = None

    def stage(self) -> None:
        """Reads and verifies every weight byte; the engine is not touched."""
        from_file = {d.section_name: name for name, d in self.snap.weights.items()}
        if self.route == "checkpoint/worker":  # read and checked there, kept for commit
            self.parts.workers.call("stage_weights", path=self.snap.source.path)
        elif self.route in ("parameters/gpu-staged", "parameters/gpu-streamed"):
            from thaw.core.gpu_files import copy_sections_to_gpu, stream_sections_to_gpu

            offsets, total = {}, 0
            for section in from_file:
                offsets[section] = total
                total += -(-self.container.section(section).length // 256) * 256
            self._staging = torch.empty(total, dtype=torch.uint8, device=self.parts.kv_caches[0].device)
            views = {sec: self._staging[off:off + self.container.section(sec).length]
                     for sec, off in offsets.items()}
            if self.streamed:  # read with O_DIRECT, CRC-checked as read, copied up on a side stream
                stream_sections_to_gpu(self.container, views)
            else:
                copy_sections_to_gpu(self.registered, views, verify="gpu")
            self._staged = {from_file[sec]: v for sec, v in views.items()}
        elif self.route == "parameters/host-verified":
            from thaw.core.gpu_files import check_sections

            check_sections(self.registered, list(from_file))
        elif self.route == "checkpoint":
            self._staged, self.route = stage_checkpoint(self.snap, self.parts.kv_caches[0].device,
                                                        self.registry, cold=self.cold)
        else:  # parameters/host: every chunk is checked as it is read
            self._staged = {name: d.tensor() for name, d in self.snap.weights.items()}

    def commit(self) -> int:
        """Puts the staged weights into the engine; returns how many tensors were loaded."""
        if self.route == "checkpoint/worker":
            self.parts.workers.call("commit_weights")
        elif self.route.startswith("checkpoint/"):
            reload_weights(self.parts, list(self._staged.items()))
        elif self.route == "parameters/host-verified":
            from thaw.core.gpu_files import copy_sections_to_gpu

            # Checked again as it lands: what the engine gets is what was checked, even if the
            # mapped file changed since `stage` (a mismatch now is `WeightsInconsistent`).
            copy_sections_to_gpu(self.registered, {d.section_name: self.params[name].view(-1).view(torch.uint8)
                                                   for name, d in self.snap.weights.items()}, verify="gpu")
        else:  # parameters, staged on the GPU or read on the host: byte copies into each one
            with torch.no_grad():
                for name, src in self._staged.items():
                    self.params[name].view(-1).view(torch.uint8).copy_(src.reshape(-1).view(torch.uint8))
        self.release()
        return len(self.snap.weights)

    def release(self) -> None:
        """Frees what `stage` held (also after a failure); safe to call more than once."""
        self._staged, self._staging = {}, None
        if self.route == "checkpoint/worker":
            self.parts.workers.call("release")
        if self.parts.on_cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # the staging memory goes back to the device, not to torch's cache
