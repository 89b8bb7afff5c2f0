"""An S3-compatible server on localhost, as its own process (tests, benchmarks).

Runs moto's standalone server (``python -m moto.server``): a real HTTP endpoint that real
S3 clients (s3fs, botocore) talk to over TCP, holding objects in that process's memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from typing import Optional

from .vllm_server import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "thaw-test", "AWS_SECRET_ACCESS_KEY": "thaw-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """One moto server process; `env` is what a client needs to reach it (endpoint and
    test credentials), `make_bucket` creates a bucket through a real client."""

    def __init__(self, log_path: Optional[str] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path or os.devnull, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def wait(self, timeout: float = 60) -> "S3Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"moto server did not answer in {timeout} s")

    def make_bucket(self, name: str) -> str:
        """Creates bucket `name` (with the env set in this process); returns s3://name."""
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.url}, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        fs.mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
