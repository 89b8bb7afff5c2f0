"""The command line's client of a server's thaw endpoints (`thaw snapshot/restore/status
--url`), standard library only. An HTTP error whose body carries a thaw error comes back as
that `ThawError` type; a server that cannot be reached is an OSError."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Optional

from .core.errors import ThawError, rebuild_error

API_KEY_ENV = "VLLM_API_KEY"


def call(url: str, op: str, body: Optional[dict[str, Any]] = None, *, api_key: Optional[str] = None,
         timeout: float = 3600.0) -> dict[str, Any]:
    """GET /thaw/status (no body) or POST /thaw/OP with a JSON body; returns the reply."""
    endpoint = url.rstrip("/") + f"/thaw/{op}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(endpoint, data=data, method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json"})
    key = api_key or os.environ.get(API_KEY_ENV)
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            error = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            raise ThawError(f"{endpoint}: HTTP {exc.code} without a thaw error body "
                            f"({raw[:200]!r}); is thaw's middleware enabled on that server?") from None
        raise rebuild_error(error["type"], error["message"], f"{endpoint} (HTTP {exc.code})") from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach {endpoint}: {exc.reason}") from None
