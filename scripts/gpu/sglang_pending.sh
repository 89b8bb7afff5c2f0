#!/usr/bin/env bash
# On the GPU box, inside with_sglang.sh: the SGLang checks that have not yet passed on the
# card, most telling first, each under its own time limit, each log written to $OUT as it
# finishes (a call that runs out of time still returns the ones before). E.g.
#   bash scripts/gpu/with_sglang.sh bash "$PWD/scripts/gpu/sglang_pending.sh"
# Default: page 64's conformance checks not yet run there. `cross` (vLLM <-> SGLang; needs
# vLLM's bundle unpacked by an earlier with_vllm.sh call) and `retired` (the recycled session
# snapshot at page 16) passed on an H100 at a7baa3d. Budget about 7 minutes;
# STEPS=e2e for the end-to-end receipt (E2E_ARGS, e.g. "--phases parent,kv_link,thaw,fork"), STEPS=server for the HTTP server (passed at 70db794).
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
steps="${STEPS:-page64rest}"
commit="${THAW_GIT_COMMIT:-}"
run() {  # run NAME SECONDS PYTEST-ARGS...
  local name="$1" limit="$2"; shift 2
  timeout "$limit" python3 -m pytest -q -p no:cacheprovider --tb=short "$@" > "$out/$name.log" 2>&1
  echo "$name: exit $? ($(tail -n 1 "$out/$name.log"))"
}
t="$repo/tests/test_sglang_gpu_conformance.py"
for step in ${steps//,/ }; do
  case "$step" in
    weights) run weights 200 "$t" -k weights_are_staged ;;               # cold route after f91b0b9
    inflight) run inflight 200 "$t" -k "Page16 and inflight" ;;         # resume_oracle="resubmitted"
    prepared) run prepared 200 "$t" -k prepared_pages ;;                 # prepare(kv_on_device=True)
    page16) run page16 560 "$t" -k "Page16" ;;
    page64) run page64 300 "$t" -k "Page64 and (hits_prefix or kv_is_what or corrupted)" ;;
    page64rest) run page64rest 400 "$t" -k "Page64 and not (hits_prefix or kv_is_what or corrupted)" ;;  # not run at 79a486a
    retired) run retired 200 "$t" -k "Page16 and retired" ;;             # recycle=; passed at a7baa3d
    server) run server 400 "$repo/tests/test_sglang_serve_gpu.py" ;;           # launch_server on the GPU
    cross) if [ -f /tmp/site/.unpacked ]; then  # vLLM's bundle, unpacked by an earlier with_vllm.sh
             (export THAW_VLLM_PATH=/tmp/site THAW_SGLANG_PATH=/tmp/sgsite; run cross 560 "$repo/tests/test_cross_engine_gpu.py")
           else echo "cross: vLLM's bundle is not unpacked in /tmp/site (run scripts/gpu/with_vllm.sh once)"; fi ;;
    e2e) timeout 560 python3 "$repo/benchmarks/gpu_e2e_sglang.py" ${E2E_ARGS:-} > "$out/e2e.log" 2>&1
         echo "e2e: exit $?"; cp "$repo"/benchmarks/receipts/gpu_e2e_sglang-*-"${commit:0:8}"*.json "$out/" ;;
    *) echo "unknown step $step (weights, inflight, prepared, page16, page64, page64rest, retired, server, cross, e2e)"; exit 2 ;;
  esac
done
