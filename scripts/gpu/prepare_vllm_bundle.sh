#!/usr/bin/env bash
# Here (with network): builds the vLLM 0.26.0 bundle for the GPU box in .gpuA/ and .gpuB/
# (both ignored by git): the wheel without kernels a dense Llama on an H100 never loads,
# compressed and split under the 64 MiB a device call carries, plus its missing wheels.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
python3 -m pip download -q --no-deps -d "$work" vllm==0.26.0
(cd "$work" && mkdir x && cd x && unzip -q ../vllm-0.26.0-*.whl &&
 rm -f vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so \
       vllm/_flashmla_C.abi3.so vllm/_flashmla_extension_C.abi3.so vllm/_qutlass_C.abi3.so \
       vllm/third_party/deep_gemm/_C.cpython-31[0134]-*.so &&
 rm -rf vllm/vllm-rs && tar -c vllm vllm-0.26.0.dist-info | xz -T2 -6 > ../vllm.tar.xz)
rm -rf "$repo/.gpuA" "$repo/.gpuB" && mkdir -p "$repo/.gpuA" "$repo/.gpuB/deps"
split -b 55M "$work/vllm.tar.xz" "$work/vpart."
mv "$work/vpart.aa" "$repo/.gpuA/" && mv "$work/vpart.ab" "$repo/.gpuB/"
plat=""; for n in 17 24 27 28 31 34 35; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
for pkg in pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection annotated-types cbor2 pyzmq \
           openai-harmony openai httpx2 httpcore2 sniffio msgspec pybase64 cachetools llguidance==1.7.6 \
           xgrammar==0.2.7 apache-tvm-ffi==0.1.10 fastapi==0.115.12 starlette==0.46.2 \
           partial-json-parser jiter truststore; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $plat --platform manylinux2014_x86_64 -d "$repo/.gpuB/deps" "$pkg"
done
mkdir -p "$repo/.git/info" && touch "$repo/.git/info/exclude"
grep -qx '/.gpuA/' "$repo/.git/info/exclude" || printf '/.gpuA/\n/.gpuB/\n' >> "$repo/.git/info/exclude"
echo "bundle ready: carry .gpuA (copy vpart.aa to /tmp), then .gpuB with scripts/gpu/with_vllm.sh"
