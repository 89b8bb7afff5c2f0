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
