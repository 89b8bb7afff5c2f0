"""What every `thaw` command shares about its arguments."""

from __future__ import annotations

import json
from typing import Any


class UsageError(Exception):
    """Arguments that do not make a command (exit 64, with the usage line)."""


def json_argument(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} must be JSON, e.g. '{{\"model\": \"DIR\"}}': {exc.msg} at "
                         f"character {exc.pos} of {text!r}") from None
