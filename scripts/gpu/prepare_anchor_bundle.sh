#!/usr/bin/env bash
# Here (with network): fetches the anchor project's wheels for benchmarks/vs_anchor.py into
# .gpuAnchor/ (ignored by git): thaw-vllm 0.6.0 and thaw-native 0.3.2 built for the GPU box's
# Python (3.12). Carry .gpuAnchor on a device call and pass it as --anchor-wheels.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$repo/.gpuAnchor" && mkdir -p "$repo/.gpuAnchor"
python3 -m pip download -q --no-deps -d "$repo/.gpuAnchor" thaw-vllm==0.6.0
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 -d "$repo/.gpuAnchor" thaw-native==0.3.2
mkdir -p "$repo/.git/info" && touch "$repo/.git/info/exclude"
grep -qx '/.gpuAnchor/' "$repo/.git/info/exclude" || printf '/.gpuAnchor/\n' >> "$repo/.git/info/exclude"
ls -l "$repo/.gpuAnchor"
