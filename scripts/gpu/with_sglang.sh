#!/usr/bin/env bash
# On the GPU box: unpack the SGLang 0.5.14 bundle carried in two pieces (see
# prepare_sglang_bundle.sh) into /tmp/sgsite, install thaw, then run the given command from
# /tmp with SGLang on the path, e.g.
#   bash scripts/gpu/with_sglang.sh python3 -m pytest -q "$PWD/tests/test_sglang_gpu_conformance.py"
# Piece S must already be in /tmp/sgS (copied there by a first call that carries .gpuS);
# piece T (.gpuT) is needed only on the first call that unpacks. vLLM's bundle
# (with_vllm.sh) lives apart in /tmp/site: the two engines pin different transformers.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
site=/tmp/sgsite
if [ ! -f "$site/.unpacked" ]; then  # a later call on the same warm box reuses it
  mkdir -p "$site"
  python3 -c "import sys, tarfile; tarfile.open('/tmp/sgS/sgl_kernel.tar.xz').extractall(sys.argv[1])" "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
    /tmp/sgS/wheels/*.whl "$repo"/.gpuT/wheels/*.whl
  cp -r "$repo/.gpuT/IPython" "$site/"
  touch "$site/.unpacked"
fi
export PYTHONPATH="$site"
bash "$repo/scripts/gpu/install_thaw.sh"
cd /tmp && "$@"
