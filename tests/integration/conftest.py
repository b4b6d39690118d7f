import pytest


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A TUNER_HOME of its own for the session; the converted embedded model stays in the shared cache."""
    home = tmp_path_factory.mktemp("tuner-home")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("TUNER_HOME", str(home))
    yield home
    patcher.undo()
