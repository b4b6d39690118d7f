"""Where the app runs (tuner/runtime.py) and the start-up install's bookkeeping (tuner/bootstrap.py)."""

from pathlib import Path

from tuner.bootstrap import Bootstrap, pinned, version_mismatches
from tuner.runtime import detect_platform, workspace_home


def test_the_platform_is_read_from_the_hubs_variables():
    assert detect_platform({}, Path("/home/me/tuner")) == "local"
    assert detect_platform({"SPACE_ID": "carol/studio", "SYSTEM": "spaces"}) == "hf"
    assert detect_platform({"SPACE_ID": "carol/studio", "SPACES_ZERO_GPU": "true"}) == "zerogpu"
    assert detect_platform({}, Path("/home/xlab-app-center/app.py")) == "openxlab"
    assert detect_platform({"TUNER_PLATFORM": "modelscope"}) == "modelscope"


def test_jobs_go_to_the_bucket_on_a_hub_and_the_disk_is_called_not_persistent_without_one(tmp_path):
    bucket = tmp_path / "data"
    assert workspace_home("hf", {}, bucket) == (None, False)
    bucket.mkdir()
    assert workspace_home("hf", {}, bucket) == (bucket / "tuner-workspace", True)
    assert workspace_home("local", {}, bucket) == (None, True)
    assert workspace_home("hf", {"TUNER_HOME": str(bucket / "mine")}, bucket) == (None, True)
    assert workspace_home("hf", {"TUNER_HOME": str(tmp_path / "elsewhere")}, bucket) == (None, False)


def test_pins_are_read_and_other_installed_versions_reported(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\ngradio[oauth]==6.17.3\ntorch==0.0.1  # not what is installed\nfoo>=1\n")
    assert pinned(requirements) == {"gradio": "6.17.3", "torch": "0.0.1"}
    problems = version_mismatches((requirements,), ("torch", "gradio"))
    assert len(problems) == 1 and problems[0].startswith("torch ") and "(pinned 0.0.1)" in problems[0]


def test_the_start_up_install_does_nothing_when_everything_imports(tmp_path):
    nodeps = tmp_path / "requirements-nodeps.txt"
    nodeps.write_text("xtuner==0.2.0\n")  # installed in the test environment
    state = Bootstrap().run(nodeps)
    assert state.ready and state.missing == [] and state.log_path is None
