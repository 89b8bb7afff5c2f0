#!/usr/bin/env bash
# Puts SGLang 0.5.14 (the release the GPU box runs) before the test environment's 0.5.21, so
# the SGLang CPU tests run against it here:
#   bash scripts/sglang-0.5.14-overlay.sh /tmp/sg14
#   PYTHONPATH=/tmp/sg14 .venv/bin/pytest -q tests/test_sglang_cache.py tests/test_sglang_adapter.py tests/test_sglang_conformance.py
# 0.5.14's wheel is tagged cp312 for one gRPC extension the engine does not load, so it is
# unpacked rather than installed; it brings its own pins of transformers, tokenizers and
# huggingface-hub.
set -euo pipefail
dest="${1:?usage: $0 DIR}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="$repo/.venv/bin/python"
work="$(mktemp -d)"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 -d "$work" sglang==0.5.14
mkdir -p "$dest"
(cd "$dest" && unzip -q -o "$work"/sglang-0.5.14-*.whl 'sglang/*' 'sglang-0.5.14.dist-info/*')
"$py" -m pip install -q --no-deps --upgrade --target "$dest" transformers==5.8.1 tokenizers==0.22.2 "huggingface-hub>=1.5,<2"
echo "SGLang 0.5.14 overlay in $dest: run the tests with PYTHONPATH=$dest"
