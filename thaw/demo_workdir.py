"""The demos' working directory: a temporary one removed at the end unless kept."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional


@contextmanager
def demo_workdir(workdir: Optional[str], keep: bool, prefix: str, kept: str, removed: str) -> Iterator[str]:
    """Yields the directory to work in: `workdir` (kept) or a new temporary one, removed at
    the end unless `keep`. Prints afterwards what was kept (`kept`, formatted with
    {workdir}) or removed (`removed`), so every printed path exists or is said gone."""
    keep = bool(workdir) or keep
    path = workdir or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
        print(kept.format(workdir=path) if keep else removed.format(workdir=path))
