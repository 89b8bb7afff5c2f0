import pytest

from thaw.core import movers as movers_mod


@pytest.fixture(params=["native", "python"])
def backend(request, monkeypatch):
    """Runs a test once over each mover implementation, restoring the selection after."""
    monkeypatch.setattr(movers_mod, "_selected", None)
    with pytest.warns(RuntimeWarning) if request.param == "python" else _nullcontext():
        m = movers_mod.select_movers(request.param)
    yield m
    monkeypatch.setattr(movers_mod, "_selected", None)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def pytest_report_header(config):
    """Names the CPU the suite runs on: vLLM's CPU kernels (and so KV layouts) depend on it."""
    return cpu_description()


def pytest_terminal_summary(terminalreporter):
    """The same line at the end, where `pytest -q` (which prints no header) shows it too."""
    terminalreporter.write_line(cpu_description())


def cpu_description() -> str:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError as exc:
        return f"cpu: unknown ({exc})"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"cpu: {model}; flags: {' '.join(f for f in wanted if f in flags) or 'none of ' + ' '.join(wanted)}"
