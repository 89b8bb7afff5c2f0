#!/usr/bin/env bash
# On the GPU box: unpack the vLLM bundle carried in two pieces (see prepare_vllm_bundle.sh),
# install thaw, run the GPU tests. Piece A must already be in /tmp (copied by a first call).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p /tmp/site
cat /tmp/vpart.aa "$repo/.gpuB/vpart.ab" > /tmp/v.tar.xz
python3 -c "import tarfile; tarfile.open('/tmp/v.tar.xz').extractall('/tmp/site')"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$repo"/.gpuB/deps/*.whl
export PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0
python3 -m pip install --no-build-isolation --no-deps -q "$repo"
cd /tmp && python3 -m pytest -q -p no:cacheprovider "$@"
