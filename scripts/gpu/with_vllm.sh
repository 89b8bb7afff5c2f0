#!/usr/bin/env bash
# On the GPU box: unpack the vLLM bundle carried in two pieces (see prepare_vllm_bundle.sh),
# install thaw, then run the given command from /tmp, e.g.
#   bash scripts/gpu/with_vllm.sh python3 -m pytest -q "$PWD/tests/test_vllm_gpu_conformance.py"
# Piece A must already be in /tmp (copied there by a first call that carries .gpuA); piece B
# (.gpuB) is needed only on the first call that unpacks. Ray is added from /tmp/ray where an
# earlier call copied .gpuR there (see prepare_ray_bundle.sh).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
if [ ! -f /tmp/site/.unpacked ]; then  # a later call on the same warm box reuses the unpacked bundle
  mkdir -p /tmp/site
  cat /tmp/vpart.aa "$repo/.gpuB/vpart.ab" > /tmp/v.tar.xz
  python3 -c "import tarfile; tarfile.open('/tmp/v.tar.xz').extractall('/tmp/site')"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$repo"/.gpuB/deps/*.whl
  touch /tmp/site/.unpacked
fi
if [ -f /tmp/ray/ray.tar.xz ] && [ ! -f /tmp/site/.ray ]; then  # Ray, where a call carried it (prepare_ray_bundle.sh)
  python3 -c "import tarfile; tarfile.open('/tmp/ray/ray.tar.xz').extractall('/tmp/site')"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/ray/deps/*.whl
  touch /tmp/site/.ray
fi
export PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0
bash "$repo/scripts/gpu/install_thaw.sh"
cd /tmp && "$@"
