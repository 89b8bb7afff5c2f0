#!/usr/bin/env bash
# On the GPU box: installs thaw from this tree (building its native movers) unless the same
# sources were installed by an earlier call on this warm box.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
sum="$(cd "$repo" && find thaw cpp cuda CMakeLists.txt pyproject.toml -type f \( -name '*.py' -o -name '*.cpp' \
  -o -name '*.h' -o -name '*.cu' -o -name '*.cmake' -o -name '*.txt' -o -name '*.toml' \) | sort | xargs cat | sha1sum)"
if [ "$(cat /tmp/.thaw-installed 2>/dev/null)" != "$sum" ]; then
  python3 -m pip install --no-build-isolation --no-deps -q "$repo"
  echo "$sum" > /tmp/.thaw-installed
fi
