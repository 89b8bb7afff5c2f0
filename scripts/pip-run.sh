#!/usr/bin/env bash
# Runs `VENV/bin/python -m pip ARGS...` quietly. sglang is installed without its dependency
# list on purpose (that list names CUDA-only kernels; see install-engines.sh), so every later
# pip call ends with "ERROR: pip's dependency resolver ..." and a line per unmet sglang
# requirement. Those lines are expected: they are replaced by one line saying so. Any other
# conflict pip reports is shown as pip wrote it, and a failing pip call shows everything.
set -uo pipefail
venv="${1:?usage: pip-run.sh VENV PIP-ARGS...}"; shift
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "$venv/bin/python" -m pip "$@" 2> "$log"; then
  cat "$log" >&2
  exit 1
fi
header="^ERROR: pip's dependency resolver does not currently take into account"
expected="^sglang [0-9.]+ requires "
conflicts=$(grep -cE " requires .*(not installed|incompatible)" "$log" || true)
sglang_lines=$(grep -cE "$expected" "$log" || true)
if [ "$conflicts" -gt 0 ] && [ "$conflicts" = "$sglang_lines" ]; then
  grep -vE "$header|$expected" "$log" >&2 || true
  echo "  (pip listed $sglang_lines requirements of sglang as unmet: expected, sglang is installed" \
       "without its CUDA-only dependency list; everything it imports on CPU is installed)" >&2
else
  cat "$log" >&2
fi
