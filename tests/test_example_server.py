"""The embedding example (examples/paged_server, a paged-KV server on `transformers`),
installed as its own package, registers with thaw through its entry points and passes the
full conformance suite, run the documented way: from the installed thaw package."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from thaw.testing.tiny_model import TinyLlama, build_tiny_llama

from .engines import require

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "paged_server"
pytestmark = [require("transformers", "run `bash scripts/setup.sh --test --engines`"), pytest.mark.engine]


def test_example_server_passes_the_suite_from_the_installed_package(tmp_path):
    source, site = tmp_path / "source", tmp_path / "site"  # built from a copy: the tree stays clean
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, timeout=600)
    assert "paged_server" in (site / "paged_server_example-0.1.dist-info" / "entry_points.txt").read_text()
    model = build_tiny_llama(tmp_path / "tiny")
    other = build_tiny_llama(tmp_path / "other", TinyLlama(num_hidden_layers=3))
    cmd = [sys.executable, "-m", "thaw.conformance",
           "--driver", "paged_server",  # the name its entry point registers
           "--config", json.dumps({"model": str(model)}),
           "--fresh-config", json.dumps({"load_format": "dummy"}),
           "--mismatch", 'dtype={"dtype": "bfloat16"}:dtype',
           "--mismatch", f'model={json.dumps({"model": str(other)})}:model_config_digest',
           "--page-size", "16"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "thaw conformance: driver paged_server.driver:PagedServerDriver" in out.stdout
    assert "engine paged_server 0.1: LlamaForCausalLM, float32, 2 layers" in out.stdout
    assert out.stdout.count("  passed ") == 8 and "8 passed" in out.stdout
