"""Which snapshot sources are URLs (read through fsspec), and how another process names one."""

from __future__ import annotations

import os
import re
from typing import Any

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: Any) -> bool:
    """True for a URL thaw reads through fsspec (any scheme but file://)."""
    return isinstance(source, str) and bool(URL.match(source)) and not source.startswith("file://")


def absolute(source: Any) -> str:
    """`source` as another process can open it: a URL as it is, a path made absolute."""
    return source if is_url(source) else os.path.abspath(os.fspath(source))
