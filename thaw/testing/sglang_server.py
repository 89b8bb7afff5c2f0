"""A real SGLang HTTP server (`python -m sglang.launch_server`) with thaw installed, as a
subprocess (tests, benchmarks), under the CPU settings of `thaw.adapters.sglang.driver`."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Optional

from thaw.adapters.sglang.defaults import CPU_ENV, ENGINE_DEFAULTS
from thaw.child_process import CHILD_CWD, child_env, python_command

from .vllm_server import free_port, stop_process, wait_for_http


def _flags(settings: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False and value is not None:
            out += [flag, str(value)]
    return out


class SGLangServer:
    """One server process serving `model` with `snapshot_dir` as its THAW_SNAPSHOT_DIR;
    `settings` override the driver's CPU engine settings (e.g. ``load_format="dummy"``)."""

    def __init__(self, model: str, snapshot_dir: str, log_path: str, *, api_key: Optional[str],
                 env: Optional[dict[str, str]] = None, **settings: Any) -> None:
        self.model, self.api_key = model, api_key
        self.port = free_port(below=30000)  # SGLang 0.5.14 derives a gRPC port above its own (seen past 65535)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        settings = {**ENGINE_DEFAULTS, "log_level": "warning", **settings}
        self.proc = subprocess.Popen(
            python_command("sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
                           "--port", str(self.port), *(["--api-key", api_key] if api_key else []),
                           *_flags(settings)),
            stdout=self.log, stderr=subprocess.STDOUT, cwd=CHILD_CWD,
            env=child_env({**CPU_ENV, "THAW_SNAPSHOT_DIR": str(snapshot_dir), **(env or {})}))

    def wait(self, timeout: float = 300) -> "SGLangServer":
        wait_for_http(self.proc, self.url + "/health", timeout, f"see {self.log.name}")
        return self

    def _post(self, path: str, data: Optional[bytes], method: str, timeout: float) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.api_key}",
                                              "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.read()

    def request(self, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        """POST `body` (or GET without one) to `path` with the API key; the JSON reply."""
        raw = self._post(path, None if body is None else json.dumps(body).encode(),
                         "GET" if body is None else "POST", 600)
        return json.loads(raw) if raw.strip() else None

    def flush_cache(self, timeout: float = 10.0) -> None:
        """Empties the radix cache (SGLang's /flush_cache). SGLang refuses it (400) while a
        request is still in its scheduler's batches, which a request just answered can be for
        an iteration; asked again every 0.1 s until `timeout`, then the refusal is raised."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = self._post("/flush_cache", None, "POST", 60).decode()
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 400 or time.monotonic() > deadline:
                    raise RuntimeError(f"SGLang did not flush its cache: HTTP {exc.code} "
                                       f"{exc.read().decode(errors='replace')!r}") from exc
                time.sleep(0.1)
        if "Cache flushed" not in text:
            raise RuntimeError(f"SGLang did not flush its cache: {text!r}")

    def generate(self, input_ids: list[int], max_new_tokens: int = 8) -> tuple[list[int], int]:
        """(greedy output ids, cached prompt tokens) of one /generate request."""
        out = self.request("/generate", {"input_ids": input_ids, "sampling_params": {
            "max_new_tokens": max_new_tokens, "temperature": 0.0, "ignore_eos": True}})
        return list(out["output_ids"]), int(out["meta_info"]["cached_tokens"])

    def stop(self) -> None:
        stop_process(self.proc, 60)
        self.log.close()
