"""The command line's client of a server's thaw endpoints (`thaw snapshot/restore/status
--url`), standard library only. An HTTP error whose body carries a thaw error comes back as
that `ThawError` type; a server that cannot be reached is an OSError. Redirects are not
followed (the API key would go with them to wherever they point, and a POST would come back
as a GET): a redirect is a `ThawError` naming where it pointed."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Optional

from .core.errors import ThawError, rebuild_error

API_KEY_ENVS = ("THAW_API_KEY", "VLLM_API_KEY")  # the first one set is sent


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError, answered in `call`


_OPENER = urllib.request.build_opener(_NoRedirects())


def call(url: str, op: str, body: Optional[dict[str, Any]] = None, *, api_key: Optional[str] = None,
         timeout: float = 3600.0) -> dict[str, Any]:
    """GET /thaw/status (no body) or POST /thaw/OP with a JSON body; returns the reply."""
    endpoint = url.rstrip("/") + f"/thaw/{op}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(endpoint, data=data, method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json"})
    key = api_key or next((os.environ[k] for k in API_KEY_ENVS if os.environ.get(k)), None)
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise ThawError(f"{endpoint}: the server redirects (HTTP {exc.code}) to {exc.headers.get('location')!r}; "
                            "thaw follows no redirects, so the API key goes nowhere else: pass the final URL") from None
        raw = exc.read()
        error = _thaw_error(raw)
        if error is not None:
            raise rebuild_error(error["type"], error["message"], f"{endpoint} (HTTP {exc.code})") from None
        if exc.code in (401, 403):  # the server's own API-key check answered
            raise ThawError(f"{endpoint}: HTTP {exc.code} Unauthorized: the server refused the API key; pass "
                            f"its key with --api-key or ${API_KEY_ENVS[0]}") from None
        raise ThawError(f"{endpoint}: HTTP {exc.code} without a thaw error body ({raw[:200]!r}); does that "
                        "server run thaw's endpoints (vLLM: --middleware thaw.adapters.vllm.server.ThawMiddleware; "
                        "SGLang: thaw installed where it runs)?") from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach {endpoint}: {exc.reason}") from None


def _thaw_error(raw: bytes) -> Optional[dict[str, str]]:
    """The ``{"type", "message"}`` of a thaw error body, else None."""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict) and isinstance(error.get("type"), str) and isinstance(error.get("message"), str):
        return error
    return None
