#!/usr/bin/env bash
# On the GPU box, after with_vllm.sh and/or with_sglang.sh unpacked their bundles: runs
# pytest targets side by side, each in its own process with its engine's packages on the
# path, its log in $OUT (at most 8 come back), all ended by LIMIT seconds (default 520):
#   bash scripts/gpu/parallel_pytest.sh vllm:tests/test_vllm_gpu_conformance.py::TestVLLMOnGPU \
#        sglang:tests/test_sglang_gpu_conformance.py::TestSGLangOnGPUPage16
# The suites' engines share the card (their settings ask for a small part of it each), and
# the box's 16 cores: seven suites at once ran each about 1.5x slower than alone (2026-12-07),
# so give each at most three others.
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
limit="${LIMIT:-520}"
for spec in "$@"; do
  engine="${spec%%:*}" target="${spec#*:}"
  case "$engine" in vllm) site=/tmp/site ;; sglang) site=/tmp/sgsite ;; *) echo "unknown engine $engine"; exit 2 ;; esac
  log="$OUT/$(basename "${target//::/.}" | tr -c 'A-Za-z0-9._\n-' '_').log"
  (cd /tmp && PYTHONPATH="$site" VLLM_USE_FLASHINFER_SAMPLER=0 timeout "$limit" \
     python3 -m pytest -q -p no:cacheprovider -rs "$repo/$target" > "$log" 2>&1; echo "rc=$?" >> "$log") &
done
wait
for log in "$OUT"/*.log; do echo "== $(basename "$log")"; tail -n 3 "$log"; done
