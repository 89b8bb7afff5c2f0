"""Prints what thaw's vLLM adapter needs to know about a GPU engine (run on the GPU box)."""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")

from vllm import LLM, SamplingParams  # noqa: E402

model = sys.argv[1]
llm = LLM(model=model, dtype="bfloat16", enforce_eager=True, enable_prefix_caching=True,
          max_model_len=2048, block_size=16, gpu_memory_utilization=0.3, seed=0,
          skip_tokenizer_init=True)
core = llm.llm_engine.engine_core.engine_core
runner = core.model_executor.driver_worker.worker.model_runner
info = {"runner": type(runner).__name__, "has_kv_caches": hasattr(runner, "kv_caches")}
ctx = core.vllm_config.compilation_config.static_forward_context
layers = [(n, m) for n, m in ctx.items() if hasattr(m, "kv_cache")]
name, att = layers[0]
kv = att.kv_cache[0] if isinstance(att.kv_cache, list) else att.kv_cache
info.update(layer=name, impl=type(getattr(att, "impl", None)).__name__,
            backend=getattr(getattr(att, "attn_backend", None), "__name__", None),
            kv_shape=list(kv.shape), kv_stride=list(kv.stride()), kv_dtype=str(kv.dtype),
            contiguous=kv.is_contiguous(), storage_bytes=kv.untyped_storage().nbytes(),
            num_layers=len(layers))
if info["has_kv_caches"]:
    kc = runner.kv_caches
    info["runner_kv_caches"] = [type(kc).__name__, len(kc), list(kc[0].shape) if len(kc) else None]
bp = core.scheduler.kv_cache_manager.block_pool
info["block_pool"] = [type(bp).__name__, bp.num_gpu_blocks, bp.hash_block_size]
out = llm.generate([{"prompt_token_ids": list(range(4, 300))}], SamplingParams(max_tokens=4), use_tqdm=False)[0]
out2 = llm.generate([{"prompt_token_ids": list(range(4, 300))}], SamplingParams(max_tokens=4), use_tqdm=False)[0]
info["tokens"] = [list(out.outputs[0].token_ids), list(out2.outputs[0].token_ids)]
info["cached"] = [out.num_cached_tokens, out2.num_cached_tokens]
print("PROBE " + json.dumps(info))
