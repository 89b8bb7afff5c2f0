"""SGLang's cache namespaces (a request's `extra_key` and `cache_salt`) as the neutral
prefix tree's extra key, and back."""

from __future__ import annotations

import json
from typing import Optional

from thaw.core import EngineUnsupported


def encode_namespace(extra_key: Optional[str], cache_salt: Optional[str]) -> Optional[str]:
    """A cache salt alone is written as vLLM writes it ("cache_salt:<salt>")."""
    if extra_key is None and not cache_salt:
        return None
    if extra_key is None:
        return f"cache_salt:{cache_salt}"
    return "sglang:" + json.dumps([extra_key, cache_salt or None])


def decode_namespace(key: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    if key is None:
        return None, None
    if key.startswith("cache_salt:"):
        return None, key[len("cache_salt:"):]
    if key.startswith("sglang:"):
        extra, salt = json.loads(key[len("sglang:"):])
        return extra, salt
    raise EngineUnsupported(f"prefix extra key {key!r} has no SGLang equivalent")
