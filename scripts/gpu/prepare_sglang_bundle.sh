#!/usr/bin/env bash
# Here (with network): builds the SGLang 0.5.14 bundle for the GPU box (torch 2.11, no
# network) in .gpuS/ and .gpuT/ (ignored by git), each under the 64 MiB a device call carries:
#   .gpuS: the sglang wheel, sglang-kernel without the kernels a dense Llama on Triton
#          attention never loads (FlashAttention 3, Blackwell, FlashMLA), flashinfer_python
#          (imported by SGLang at import time) and transformers 5.8.1 (SGLang's pin);
#   .gpuT: the small wheels SGLang and its HTTP server import, and an import-only IPython
#          stand-in (sglang.utils imports IPython.display for notebooks; never called here).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
plat=""; for n in 17 24 27 28 31 34 35; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
fetch() {  # fetch DEST PKG...: cp312 manylinux wheels, no dependencies
  local dest="$1"; shift
  for pkg in "$@"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      $plat --platform manylinux2014_x86_64 -d "$dest" "$pkg"
  done
}
rm -rf "$repo/.gpuS" "$repo/.gpuT" && mkdir -p "$repo/.gpuS/wheels" "$repo/.gpuT/wheels"
fetch "$repo/.gpuS/wheels" sglang==0.5.14 flashinfer_python==0.6.12 transformers==5.8.1
fetch "$work" sglang-kernel==0.4.4
(cd "$work" && mkdir k && cd k && unzip -q ../sglang_kernel-0.4.4-*.whl &&
 rm -f sgl_kernel/flash_ops.abi3.so sgl_kernel/sm100/common_ops.abi3.so sgl_kernel/flashmla_ops.abi3.so &&
 tar -c . | xz -T2 -6 > "$repo/.gpuS/sgl_kernel.tar.xz")
fetch "$repo/.gpuT/wheels" tokenizers==0.22.2 "huggingface-hub>=1.5,<2" uvicorn orjson setproctitle interegular \
  torch_memory_saver torchao==0.17.0 python-multipart compressed-tensors gguf blobfile==3.0.0 \
  cuda-python==13.0.3 cuda-bindings==13.0.3 cuda-pathfinder dill loguru uvloop einops msgspec pybase64 \
  pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection annotated-types pyzmq openai==2.6.1 \
  httpx httpcore sniffio h11 anyio jiter distro fastapi==0.115.12 starlette==0.46.2 partial-json-parser \
  openai-harmony==0.0.4 apache-tvm-ffi==0.1.10 \
  prometheus-client watchfiles python-dotenv httptools websockets \
  jsonschema jsonschema-specifications referencing rpds-py attrs soundfile cffi pycparser
mkdir -p "$repo/.gpuT/IPython"
printf '"""Import-only stand-in: sglang.utils imports IPython.display for notebooks."""\n' \
  > "$repo/.gpuT/IPython/__init__.py"
printf 'def display(*args, **kwargs):\n    raise RuntimeError("IPython stand-in: not a notebook")\n\n\nclass HTML(str):\n    pass\n' \
  > "$repo/.gpuT/IPython/display.py"
mkdir -p "$repo/.git/info" && touch "$repo/.git/info/exclude"
grep -qx '/.gpuS/' "$repo/.git/info/exclude" || printf '/.gpuS/\n/.gpuT/\n' >> "$repo/.git/info/exclude"
du -sh "$repo/.gpuS" "$repo/.gpuT"
echo "bundle ready: carry .gpuS (copy it to /tmp/sgS), then .gpuT with scripts/gpu/with_sglang.sh"
