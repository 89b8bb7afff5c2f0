"""thaw's C++ CRC32C on every hardware path it has: SSE4.2 (this x86-64 machine) and the
ARMv8 CRC extension (AArch64: Graviton, Grace), the latter cross-compiled and run under
qemu-user. Each runs tests/native/crc32c_vectors.cpp: RFC 3720 known answers, and the
hardware path against the portable one across every branch of the code; and the worker
threads the native movers share (tests/native/worker_pool_check.cpp)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "cpp" / "crc32c.cpp", ROOT / "cpp" / "worker_pool.cpp",
           ROOT / "tests" / "native" / "crc32c_vectors.cpp"]
# (compiler, runner, backend the run must report)
TARGETS = {
    "x86-64 sse4.2": ("g++", [], "sse4.2"),
    "aarch64 armv8-crc": ("aarch64-linux-gnu-g++", ["qemu-aarch64", "-cpu", "max"], "armv8-crc"),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_hardware_crc32c_known_answers(target, tmp_path):
    compiler, runner, backend = TARGETS[target]
    missing = [tool for tool in [compiler, *runner[:1]] if shutil.which(tool) is None]
    if target.startswith("x86-64") and os.uname().machine != "x86_64":
        pytest.skip(f"not an x86-64 machine ({os.uname().machine})")
    if missing:
        message = (f"needs {', '.join(missing)} (Debian: g++-aarch64-linux-gnu, qemu-user; "
                   ".ci/run installs them)")
        if os.environ.get("THAW_REQUIRE_CROSS_CRC") == "1":
            pytest.fail(message)
        pytest.skip(message)
    exe = tmp_path / "crc32c_vectors"
    subprocess.run([compiler, "-std=c++17", "-O2", "-static", "-pthread", f"-I{ROOT / 'cpp'}",
                    *map(str, SOURCES), "-o", str(exe)], check=True, capture_output=True, text=True)
    out = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"backend {backend}" in out.stdout, out.stdout
    assert " 0 failed" in out.stdout, out.stdout


def test_worker_pool_runs_every_item_once_across_callers_errors_and_fork(tmp_path):
    """tests/native/worker_pool_check.cpp against the movers' shared worker threads."""
    exe = tmp_path / "worker_pool_check"
    subprocess.run(["g++", "-std=c++17", "-O2", "-pthread", f"-I{ROOT / 'cpp'}", str(ROOT / "cpp" / "worker_pool.cpp"),
                    str(ROOT / "tests" / "native" / "worker_pool_check.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "worker pool: 0 failed" in out.stdout, out.stdout + out.stderr
