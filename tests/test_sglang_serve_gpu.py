"""SGLang's HTTP server (`python -m sglang.launch_server`) on a CUDA device, as people run
it (SGLang's Llama, Triton attention, pages of 16), with thaw installed: the checks of
tests/test_sglang_serve.py, driven over HTTP and by `thaw snapshot/restore/status --url`.
The snapshots at object URLs need an S3-compatible server beside them (moto), which runs
where it is installed. Skipped, with the reason, on machines without CUDA; it runs on the
GPU box with SGLang 0.5.14 (scripts/gpu/sglang_pending.sh, step server)."""

import contextlib
import importlib.util

import pytest
import torch

from thaw.testing.sglang_server import SGLangServer
from thaw.testing.tiny_model import build_tiny_llama

from .engines import needs_sglang
from .serve_cases import serving, snapshot_bucket
from .test_sglang_gpu_conformance import GPU_MODEL, GPU_SETTINGS
from .test_sglang_serve import KEY, ServerChecks

pytestmark = [needs_sglang, pytest.mark.engine, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device: CPU-only machine; runs on the GPU box")]
# The GPU conformance suite's settings, served; they override the CPU engine's settings
# SGLangServer starts from.
SERVED = {**GPU_SETTINGS, "page_size": 16}


@contextlib.contextmanager
def bucket_where_installed():
    """(URL prefix, env) of an S3-compatible server, or (None, {}) where moto is missing."""
    if importlib.util.find_spec("moto") is None:
        yield None, {}
        return
    with snapshot_bucket() as found:
        yield found


class TestSGLangServerOnGPU(ServerChecks):
    PAGE_SIZE = 16

    @pytest.fixture(scope="class")
    def servers(self, tmp_path_factory):
        model = str(build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny", GPU_MODEL, dtype="bfloat16"))
        snaps = tmp_path_factory.mktemp("snapshots")
        logs = tmp_path_factory.mktemp("logs")
        with bucket_where_installed() as (allowed, env):
            parent = SGLangServer(model, snaps, logs / "parent.log", api_key=KEY, env=env, **SERVED)
            child = SGLangServer(model, snaps, logs / "child.log", api_key=KEY, env=env, load_format="dummy",
                                 **SERVED)
            with serving(parent, child):
                yield parent, child, snaps, allowed
