#!/usr/bin/env bash
# On the GPU box, inside with_sglang.sh: the SGLang checks that have not yet passed on the
# card, most telling first, each under its own time limit, each log written to $OUT as it
# finishes (a call that runs out of time still returns the ones before). E.g.
#   bash scripts/gpu/with_sglang.sh bash "$PWD/scripts/gpu/sglang_pending.sh"
# Every step has passed on the card: page 64's last checks (`page64rest`, the default, about
# 6 minutes) at 6ee59d2 on an H100, `cross` (vLLM <-> SGLang; needs vLLM's bundle unpacked by
# an earlier with_vllm.sh call) and `retired` at a7baa3d, `server` at 70db794; STEPS picks
# them again. STEPS=e2e for the end-to-end receipt (E2E_ARGS, e.g.
# "--phases parent,kv_link,thaw,fork"); STEPS=serverbench for a restored fresh server
# against a cold one (benchmarks/gpu_sglang_server.py, about 7 minutes).
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
    page64rest) run page64rest 400 "$t" -k "Page64 and not (hits_prefix or kv_is_what or corrupted)" ;;  # passed at 6ee59d2
    retired) run retired 200 "$t" -k "Page16 and retired" ;;             # recycle=; passed at a7baa3d
    server) run server 400 "$repo/tests/test_sglang_serve_gpu.py" ;;           # launch_server on the GPU
    cross) if [ -f /tmp/site/.unpacked ]; then  # vLLM's bundle, unpacked by an earlier with_vllm.sh
             (export THAW_VLLM_PATH=/tmp/site THAW_SGLANG_PATH=/tmp/sgsite; run cross 560 "$repo/tests/test_cross_engine_gpu.py")
           else echo "cross: vLLM's bundle is not unpacked in /tmp/site (run scripts/gpu/with_vllm.sh once)"; fi ;;
    e2e) timeout 560 python3 "$repo/benchmarks/gpu_e2e_sglang.py" ${E2E_ARGS:-} > "$out/e2e.log" 2>&1
         echo "e2e: exit $?"; cp "$repo"/benchmarks/receipts/gpu_e2e_sglang-*-"${commit:0:8}"*.json "$out/" ;;
    serverbench) mkdir -p "$out/server-logs"
         timeout 560 python3 "$repo/benchmarks/gpu_sglang_server.py" --out-logs "$out/server-logs" > "$out/serverbench.log" 2>&1
         echo "serverbench: exit $?"; cp "$repo"/benchmarks/receipts/gpu_sglang_server-*-"${commit:0:8}"*.json "$out/" ;;
    *) echo "unknown step $step (weights, inflight, prepared, page16, page64, page64rest, retired, server, cross, e2e, serverbench)"; exit 2 ;;
  esac
done
