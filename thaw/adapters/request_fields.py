"""Which settings of an in-flight request a snapshot would lose.

Both engines keep sampling settings in a msgspec Struct (vLLM's and SGLang's
`SamplingParams`); a snapshot carries a fixed list of them. `changed_fields` names every
other field set away from its default, so an adapter refuses such a request by name
instead of resuming a different one.
"""

from __future__ import annotations

from typing import Any, Iterable


def changed_fields(params: Any, default: Any, skip: Iterable[str]) -> list[str]:
    """`name=value` for each public field of `params` that differs from `default` and is
    not in `skip` (fields the snapshot carries, or that never change generated tokens)."""
    skipped = set(skip)
    names = getattr(type(params), "__struct_fields__", None) or tuple(vars(params))
    return [f"sampling.{name}={getattr(params, name)!r}" for name in names
            if not name.startswith("_") and name not in skipped
            and getattr(params, name) != getattr(default, name)]
