"""Run as a script (MODEL PROMPT_JSON DTYPE): prints the kernel ISA vLLM picked, the layout
thaw reports, and the max difference between the K/V rows thaw reads through that layout
from vLLM's KV cache and the K/V the HF reference model computes (in float32)."""

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

import torch  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

from thaw.adapters.vllm import attach  # noqa: E402
from thaw.adapters.vllm.driver import ENGINE_DEFAULTS  # noqa: E402

model, prompt, dtype = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
llm = LLM(model=model, **{**ENGINE_DEFAULTS, "dtype": dtype})
h = attach(llm)
llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=1), use_tqdm=False)
snap = h.capture(weights=False)
_, pages = snap.prefix.match(prompt)
hf = LlamaForCausalLM.from_pretrained(model, dtype=torch.float32)
with torch.no_grad():
    cache = hf(torch.tensor([prompt]), use_cache=True).past_key_values
ctx = llm.llm_engine.engine_core.engine_core.vllm_config.compilation_config.static_forward_context
isas = sorted({str(getattr(m, "isa", None)) for m in ctx.values() if hasattr(m, "kv_cache")})
result = {"isa": isas, "layout": snap.kv.layout.name, "tokens": len(pages) * snap.kv.layout.page_size, "layers": []}
for i, layer in enumerate(snap.kv.layers):
    k, v = snap.kv.layout.planes(layer.tensor())  # [pages, P, H, D]
    k = k[pages].reshape(-1, *k.shape[2:]).float()
    v = v[pages].reshape(-1, *v.shape[2:]).float()
    hk = cache.layers[i].keys[0].permute(1, 0, 2)[: k.shape[0]]  # [T, H, D]
    hv = cache.layers[i].values[0].permute(1, 0, 2)[: v.shape[0]]
    result["layers"].append({"k": (k - hk).abs().max().item(), "v": (v - hv).abs().max().item(),
                             "scale": hv.abs().max().item()})
print("RESULT " + json.dumps(result))
