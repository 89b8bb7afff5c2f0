"""Which settings of an in-flight request a snapshot would lose.

Both engines keep sampling settings in a msgspec Struct (vLLM's and SGLang's
`SamplingParams`); a snapshot carries a fixed list of them. `changed_fields` names every
other field set away from its default, so an adapter refuses such a request by name
instead of resuming a different one.
"""

from __future__ import annotations

from typing import Any, Iterable


def _unset(value: Any) -> bool:
    """None, False and empty containers all mean "not used" (engines normalise one into
    another: vLLM turns watermarking=None into False); numbers never do (logprobs=0 asks
    for something)."""
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict, set))
                                               and len(value) == 0)


def changed_fields(params: Any, default: Any, skip: Iterable[str]) -> list[str]:
    """`name=value` for each public field of `params` that differs from `default` and is
    not in `skip` (fields the snapshot carries, or that never change generated tokens)."""
    skipped = set(skip)
    names = getattr(type(params), "__struct_fields__", None) or tuple(vars(params))
    out = []
    for name in names:
        if name.startswith("_") or name in skipped:
            continue
        value, base = getattr(params, name), getattr(default, name)
        if value != base and not (_unset(value) and _unset(base)):
            out.append(f"sampling.{name}={value!r}")
    return out
