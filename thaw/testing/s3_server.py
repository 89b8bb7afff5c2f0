"""An S3-compatible server on localhost, as its own process (tests, benchmarks).

Runs moto's standalone server (``python -m moto.server``): a real HTTP endpoint that real
S3 clients (s3fs, botocore) talk to over TCP, holding objects in that process's memory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Iterator, Optional

from thaw.child_process import CHILD_CWD, child_env, python_command

from .environ import environ_set
from .vllm_server import free_port, stop_process, wait_for_http

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "thaw-test", "AWS_SECRET_ACCESS_KEY": "thaw-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """One moto server process; `env` is what a client needs to reach it (endpoint and
    test credentials), `make_bucket` creates a bucket through a real client."""

    def __init__(self, log_path: Optional[str] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path or os.devnull, "w")
        self.proc = subprocess.Popen(python_command("moto.server", "-H", "127.0.0.1", "-p", str(self.port)),
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=CHILD_CWD, env=child_env())
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def wait(self, timeout: float = 60) -> "S3Server":
        wait_for_http(self.proc, self.url + "/moto-api/", timeout, "moto's S3 server")
        return self

    def make_bucket(self, name: str) -> str:
        """Creates bucket `name` (with the env set in this process); returns s3://name."""
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.url}, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        fs.mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.log.close()


@contextlib.contextmanager
def bucket_in_env(name: str) -> Iterator[str]:
    """A running server with bucket `name` (its s3:// URL is yielded) and this process's
    environment pointing at it (engine and worker processes started meanwhile inherit it);
    the server is stopped and the environment put back afterwards."""
    server = S3Server().wait()
    try:
        with environ_set(server.env):
            yield server.make_bucket(name)
    finally:
        server.stop()
