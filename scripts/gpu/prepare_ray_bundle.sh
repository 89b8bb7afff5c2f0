#!/usr/bin/env bash
# Here (with the package index): Ray for the GPU box in .gpuR/ (ignored by git): the cp312
# wheel without its Java jars and the dashboard's web build (a fleet starts Ray without the
# dashboard), compressed (~30 MB), plus the wheels Ray needs that the box lacks. Carry .gpuR
# in a call of its own and copy it to /tmp (`cp -r .gpuR /tmp/ray`) before the call that
# runs scripts/gpu/with_vllm.sh, which installs it from there.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
version="${1:-2.60.0}"
work="$(mktemp -d)"
plat=""; for n in 17 24 27 28 31 34 35; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $plat --platform manylinux2014_x86_64 -d "$work" "ray==$version"
rm -rf "$repo/.gpuR" && mkdir -p "$repo/.gpuR/deps"
(cd "$work" && mkdir x && cd x && unzip -q ../ray-*.whl && rm -rf ray/jars ray/dashboard/client/build &&
 tar -c ray ray-*.dist-info | xz -T2 -6 > "$repo/.gpuR/ray.tar.xz")
for pkg in click jsonschema jsonschema-specifications referencing rpds-py attrs msgpack; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $plat --platform manylinux2014_x86_64 -d "$repo/.gpuR/deps" "$pkg"
done
rm -rf "$work"
mkdir -p "$repo/.git/info" && touch "$repo/.git/info/exclude"
grep -qx '/.gpuR/' "$repo/.git/info/exclude" || echo '/.gpuR/' >> "$repo/.git/info/exclude"
du -sh "$repo/.gpuR"
