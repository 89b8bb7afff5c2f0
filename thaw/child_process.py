"""How thaw starts a Python child process (engine workers, the zygote, test servers) so that
nothing a local user can write is on its import path.

`python -m` and `python -c` put the working directory first on ``sys.path``: a child started
in ``/tmp`` (or in any directory another user can write) would import a planted ``json.py``
or ``thaw/`` package. A child started here:

- runs with ``-P`` (Python 3.11+: no working or script directory on ``sys.path``; on 3.10 a
  one-line bootstrap drops that entry before anything else is imported);
- gets ``PYTHONSAFEPATH=1``, so the processes it starts in turn (vLLM's and SGLang's engine
  processes) do the same, and a ``PYTHONPATH`` without empty or relative entries (each means
  "the working directory" to Python);
- runs in ``/`` (`CHILD_CWD`), which only root can write: a relative path means nothing there,
  so callers resolve paths before they hand them over (`absolute_path`).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional

from thaw.core.urls import is_url

CHILD_CWD = "/"
_BOOTSTRAP_310 = ("import sys, runpy; sys.path.pop(0); "
                  "runpy.run_module(sys.argv[1], run_name='__main__', alter_sys=True)")


def python_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with no working directory on the import path."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    # 3.10 has no -P: `-c` puts '' first on sys.path; the bootstrap removes it before
    # running the module (runpy and sys are imported from the standard library first).
    return [sys.executable, "-c", _BOOTSTRAP_310, module, *args]


def safe_pythonpath(value: str) -> str:
    """`value` (a PYTHONPATH) without the entries Python reads as the working directory
    (empty or relative ones)."""
    return os.pathsep.join(p for p in value.split(os.pathsep) if p and os.path.isabs(p))


def child_env(extra: Optional[Mapping[str, str]] = None, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for a child: `base` (default: this process's) with `extra` on top,
    ``PYTHONSAFEPATH=1`` and a PYTHONPATH of absolute entries only."""
    env = {**(os.environ if base is None else base), **(extra or {})}
    env["PYTHONSAFEPATH"] = "1"
    if "PYTHONPATH" in env:
        env["PYTHONPATH"] = safe_pythonpath(env["PYTHONPATH"])
        if not env["PYTHONPATH"]:
            del env["PYTHONPATH"]
    return env


# Operation arguments that name files (engine drivers' `snapshot`, `restore`, `prepare`).
PATH_ARGS = ("path", "weights_from", "recycle")


def absolute_path(value: str) -> str:
    """A path as the caller means it, made absolute for a child running in `CHILD_CWD`; a
    URL as it is."""
    return value if is_url(value) else os.path.abspath(value)


def with_absolute_paths(args: dict[str, Any]) -> dict[str, Any]:
    """`args` of an operation with its `PATH_ARGS` made absolute (`absolute_path`)."""
    return {k: absolute_path(v) if k in PATH_ARGS and isinstance(v, str) else v for k, v in args.items()}
