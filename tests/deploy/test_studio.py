"""`python -m deploy studio`: the studio itself (this repository) staged, checked for secrets and pushed
as a Space to the fake Hugging Face Hub; ModelScope and OpenXLab get the steps to take by hand."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import string
import subprocess
from pathlib import Path

import pytest
from hub_accounts import ALICE_TOKEN

from deploy import cli
from deploy.publish import publish, stage
from deploy.stage import StageError
from deploy.studio import SECRET_VARIABLES, ManualSteps, publish_studio, stage_studio, studio_files

ROOT = Path(__file__).resolve().parents[2]
NOT_STAGED = ("tests/", "bench/", ".ci/", ".notes/")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No hub token or data folder of this machine, and no way to reach a real hub."""
    from huggingface_hub import constants, file_download

    for variable in (*SECRET_VARIABLES, "TUNER_HOME", "TUNER_CACHE", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"):
        monkeypatch.delenv(variable, raising=False)
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, f"tests may not resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    closed = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    template = closed + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_stored_tokens"))


def _fake_hf_token() -> str:
    """Made up at run time, so that no source file holds it."""
    return "hf_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(34))


def _git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60)


def _git_listing() -> list[str]:
    """What git would commit, minus what a running studio never reads: computed here, independently."""
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    return sorted(p for p in listed if p and not p.startswith(NOT_STAGED) and (ROOT / p).is_file()
                  and Path(p).name != ".env")


def _ignored(rel: str) -> bool:
    return _git("check-ignore", "-q", rel).returncode == 0


def _staged(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def repo_tree():
    if _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("the repository is not a git work tree here")
    return ROOT


@pytest.fixture
def planted(repo_tree):
    """Write files into the repository for one test and take them (and any folder made for them) away."""
    made: list[Path] = []

    def plant(rel: str, text: str) -> Path:
        path = repo_tree / rel
        missing = [p for p in [path, *path.parents] if not p.exists() and p.is_relative_to(repo_tree)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        made.extend(missing)
        return path

    yield plant
    for path in made:  # the file first, then the folders made for it, innermost first
        if path.is_file():
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


# ----- (a) the file list ------------------------------------------------------------------------
def test_dry_run_stages_exactly_what_git_would_commit_minus_tests_bench_ci(repo_tree, planted, tmp_path, capsys):
    tag = secrets.token_hex(4)
    junk = [f"workspace/jobs/studio-test-{tag}/status.json", f"test-artifacts/studio-test-{tag}.txt",
            f".venv/studio-test-{tag}.txt", f"tuner/__pycache__/studio_test_{tag}.cpython-311.pyc"]
    for rel in junk:
        if _ignored(rel):  # only where .gitignore keeps it out; it also holds a token, which must not matter
            planted(rel, json.dumps({"state": "succeeded", "token": _fake_hf_token()}))
    assert _ignored(junk[0]) and _ignored(junk[1]), ".gitignore should keep /workspace/ and /test-artifacts/ out"

    before = _git_listing()
    out = tmp_path / "dry"
    assert cli.main(["studio", "--to", "hf", "--repo", "alice/my-studio", "--dry-run", str(out)]) == 0
    after = _git_listing()

    staged = _staged(out)
    assert staged in (before, after)  # others may add a file meanwhile
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{out}: {len(staged)} files would be pushed"
    assert [line.strip() for line in printed[1:]] == staged
    for needed in ("app.py", "README.md", "requirements.txt"):
        assert needed in staged
    for package in ("tuner/", "deploy/", "ui/"):
        assert any(p.startswith(package) for p in staged), package
    assert not [p for p in staged if p.startswith(("workspace/", "test-artifacts/", ".venv/", *NOT_STAGED))]
    assert not [p for p in staged if "__pycache__" in p or p.endswith(".pyc")]
    for rel in staged:
        assert (out / rel).read_bytes() == (ROOT / rel).read_bytes(), rel


def test_the_publish_tabs_stage_gives_the_studio_files(repo_tree, tmp_path):
    before = studio_files(repo_tree)
    folder = stage("studio", tmp_path / "s", "alice/my-studio", hub="hf")
    assert _staged(folder) in (before, studio_files(repo_tree))


# ----- (b) secrets ------------------------------------------------------------------------------
@pytest.mark.parametrize("variable", ["HF_TOKEN", "TUNER_OWNER_PASSWORD", None])
def test_a_planted_secret_in_an_untracked_file_stops_the_staging(repo_tree, planted, monkeypatch, tmp_path, variable):
    secret = _fake_hf_token() if variable != "TUNER_OWNER_PASSWORD" else "pw-" + secrets.token_hex(12)
    if variable:
        monkeypatch.setenv(variable, secret)
    name = f"planted_secret_{secrets.token_hex(4)}.txt"
    planted(name, f"the token, pasted by mistake: {secret}\n")
    assert not _ignored(name)

    with pytest.raises(StageError) as caught:
        stage_studio(tmp_path / "s", "hf", "alice/my-studio")
    assert name in str(caught.value)
    assert secret not in str(caught.value)


def test_with_hf_token_set_and_nothing_planted_the_token_is_in_no_staged_file(repo_tree, monkeypatch, tmp_path,
                                                                                capsys):
    token = _fake_hf_token()
    monkeypatch.setenv("HF_TOKEN", token)
    assert cli.main(["studio", "--to", "hf", "--repo", "alice/my-studio", "--dry-run", str(tmp_path / "s")]) == 0
    staged = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert len(staged) > 20
    assert not [p for p in staged if token.encode() in p.read_bytes()]
    assert token not in capsys.readouterr().out


def test_the_cli_names_the_file_that_holds_a_token(repo_tree, planted, monkeypatch, tmp_path, capsys):
    token = _fake_hf_token()
    monkeypatch.setenv("HF_TOKEN", token)
    name = f"planted_secret_{secrets.token_hex(4)}.txt"
    planted(name, token)
    assert cli.main(["studio", "--repo", "alice/my-studio", "--dry-run", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert name in err and token not in err


# ----- (c) a push to the fake Hugging Face Hub -----------------------------------------------------
def test_studio_is_pushed_as_a_gradio_space_with_its_hardware(repo_tree, hf_server, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    code = cli.main(["studio", "--to", "hf", "--repo", "alice/my-studio", "--endpoint", hf_server.url,
                     "--hardware", "t4-small"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{hf_server.url}/spaces/alice/my-studio" in out
    assert "warning" not in err and ALICE_TOKEN not in out + err

    space = hf_server.repo("alice/my-studio", "space")
    assert space.sdk == "gradio" and space.hardware == "t4-small"
    files = set(space.files)
    assert {"app.py", "README.md", "requirements.txt", "tuner/jobs.py", "deploy/studio.py", "ui/strings.py"} <= files
    assert not [p for p in files if p.startswith(("tests/", "bench/", ".ci/", "workspace/", ".venv/"))]
    assert space.files["app.py"].data == (ROOT / "app.py").read_bytes()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pushed = space.files["README.md"].data.decode("utf-8")
    if readme.startswith("---"):  # the Space's settings: the hint follows --hardware
        assert "\nsuggested_hardware: t4-small\n" in pushed.split("\n---", 1)[0] + "\n"
    else:
        assert pushed == readme
    assert not [f.path for f in space.files.values() if ALICE_TOKEN.encode() in f.data]


def test_the_publish_tab_asks_for_the_studio_hardware_chosen_in_the_page(repo_tree, hf_server):
    from ui.publish_tab import run_publish, space_hardware_choices

    assert "l4x1" in space_hardware_choices()  # huggingface_hub's own list
    steps = list(run_publish("en", None, "studio", "hf", "alice/page-studio", True, ALICE_TOKEN, "", hf_server.url,
                             "l4x1"))
    assert "alice/page-studio" in steps[-1][0] and ALICE_TOKEN not in str(steps)
    assert hf_server.repo("alice/page-studio", "space").hardware == "l4x1"
    list(run_publish("en", None, "studio", "hf", "alice/plain-studio", True, ALICE_TOKEN, "", hf_server.url, ""))
    assert hf_server.repo("alice/plain-studio", "space").hardware is None  # empty: nothing asked for


def test_a_refused_hardware_request_is_a_warning_and_the_space_stands(repo_tree, hf_server):
    hf_server.hardware_refusal = (402, "Subscribe to PRO or add a payment method to use this hardware")
    result = publish("studio", "hf", "alice/my-studio", token=ALICE_TOKEN, endpoint=hf_server.url,
                     hardware="a10g-small")
    assert result.url == f"{hf_server.url}/spaces/alice/my-studio"
    assert "app.py" in hf_server.repo("alice/my-studio", "space").files
    assert hf_server.repo("alice/my-studio", "space").hardware is None
    assert len(result.warnings) == 1
    assert "a10g-small" in result.warnings[0] and "402" in result.warnings[0]
    assert ALICE_TOKEN not in result.warnings[0]


def test_without_a_token_nothing_is_sent(repo_tree, hf_server):
    from deploy.hubs.base import PublishError

    with pytest.raises(PublishError) as caught:
        publish("studio", "hf", "alice/my-studio", endpoint=hf_server.url)
    assert caught.value.kind == "bad_token"
    assert hf_server.requests == []


# ----- which files, on small trees of their own ---------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_outside_git_the_walk_leaves_out_tools_caches_secrets_and_the_users_work(tmp_path, monkeypatch):
    root = _tree(tmp_path / "unpacked", {
        "app.py": "", "README.md": "# x\n", "tuner/jobs.py": "", "ui/strings.py": "", ".gitignore": "",
        "tests/test_x.py": "", "bench/b.py": "", ".ci/run": "", ".notes/n.md": "",
        ".git/config": "", ".venv/lib/x.py": "", "venv/x.py": "", "workspace/jobs/j/status.json": "",
        "test-artifacts/a.txt": "", "tuner/__pycache__/jobs.cpython-311.pyc": "", "tuner/old.pyc": "",
        ".whl/x.whl": "", ".gpu/x": "", ".pytest_cache/v": "", ".env": "HF_TOKEN=x", "deploy/.env": "",
        "home/jobs/j/spec.json": "", "cache/model/config.json": "",
    })
    (root / "link.txt").symlink_to("/etc/hostname")
    monkeypatch.setenv("TUNER_HOME", str(root / "home"))
    monkeypatch.setenv("TUNER_CACHE", str(root / "cache"))
    assert studio_files(root) == [".gitignore", "README.md", "app.py", "tuner/jobs.py", "ui/strings.py"]


def test_in_git_ignored_and_deleted_files_are_left_out_and_untracked_ones_go(tmp_path):
    root = _tree(tmp_path / "repo", {".gitignore": "/workspace/\n", "app.py": "", "gone.py": "",
                                     "workspace/x.json": "", "new.py": "", "tests/t.py": ""})
    assert _git("init", "-q", cwd=root).returncode == 0
    assert _git("add", "app.py", "gone.py", ".gitignore", cwd=root).returncode == 0
    (root / "gone.py").unlink()
    assert studio_files(root) == [".gitignore", "app.py", "new.py"]


def test_suggested_hardware_is_set_in_the_readme_front_matter_when_there_is_one(tmp_path):
    cases = {
        "---\ntitle: Tuner\nsdk: gradio\nsuggested_hardware: cpu-basic\n---\n\n# Tuner\n":
            "---\ntitle: Tuner\nsdk: gradio\nsuggested_hardware: t4-small\n---\n\n# Tuner\n",
        "---\ntitle: Tuner\nsdk: gradio\n---\n\n# Tuner\nsuggested_hardware: none\n":
            "---\ntitle: Tuner\nsdk: gradio\nsuggested_hardware: t4-small\n---\n\n# Tuner\nsuggested_hardware: none\n",
        "# Tuner\n\nNo front matter.\n": "# Tuner\n\nNo front matter.\n",
    }
    for number, (readme, expected) in enumerate(cases.items()):
        root = _tree(tmp_path / f"r{number}", {"app.py": "", "README.md": readme})
        folder = stage_studio(tmp_path / f"s{number}", "hf", "alice/s", hardware="t4-small", root=root)
        assert (folder / "README.md").read_text(encoding="utf-8") == expected
        assert (root / "README.md").read_text(encoding="utf-8") == readme  # the repository is not touched


def test_a_staging_folder_that_holds_the_repository_is_refused(tmp_path):
    root = _tree(tmp_path / "repo", {"app.py": "print()\n"})
    for out in (root, tmp_path):
        with pytest.raises(StageError):
            stage_studio(out, "hf", "alice/s", root=root)
    assert (root / "app.py").read_text() == "print()\n"
    inside = stage_studio(root / "out", "hf", "alice/s", root=root)
    assert _staged(inside) == ["app.py"]


# ----- ModelScope and OpenXLab: staged, then the steps ---------------------------------------------
def test_modelscope_gets_the_staged_folder_and_the_git_commands(tmp_path, monkeypatch):
    token = "ms-" + secrets.token_hex(16)
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", token)
    root = _tree(tmp_path / "repo", {"app.py": "", "README.md": "# x\n", "ms_deploy.json": json.dumps(
        {"sdk_type": "gradio", "resource_configuration": "platform/2v-cpu-16g-mem", "port": 7860})})
    with pytest.raises(ManualSteps) as caught:
        publish_studio("modelscope", "alice/tuner-studio", hardware="xgpu/8v-32g-mem-1-a10", root=root)
    steps, folder = str(caught.value), caught.value.folder
    try:
        assert caught.value.kind == "other" and token not in steps
        for command in (f"cd {folder}", "git init -b master", "git add -A",
                        "git remote add origin https://www.modelscope.cn/studios/alice/tuner-studio.git",
                        "git push -u origin master",
                        "modelscope create alice/tuner-studio --repo-type studio --sdk-type gradio"):
            assert command in steps, command
        assert _staged(folder) == ["README.md", "app.py", "ms_deploy.json"]
        settings = json.loads((folder / "ms_deploy.json").read_text())
        assert settings == {"sdk_type": "gradio", "resource_configuration": "xgpu/8v-32g-mem-1-a10", "port": 7860}
    finally:
        shutil.rmtree(folder.parent)


def test_openxlab_gets_the_staged_folder_and_the_web_form_steps(tmp_path):
    root = _tree(tmp_path / "repo", {"app.py": "", "requirements.txt": "gradio\n"})
    with pytest.raises(ManualSteps) as caught:
        publish_studio("openxlab", "alice/tuner-studio", root=root)
    steps, folder = str(caught.value), caught.value.folder
    try:
        assert _staged(folder) == ["app.py", "requirements.txt"]
        for part in (f"cd {folder}", "git push -u origin main", "https://openxlab.org.cn/apps", "app.py"):
            assert part in steps, part
    finally:
        shutil.rmtree(folder.parent)


def test_the_cli_prints_the_modelscope_steps_without_pushing(repo_tree, capsys):
    assert cli.main(["studio", "--to", "modelscope", "--repo", "alice/tuner-studio"]) == 1
    err = capsys.readouterr().err
    assert "git push -u origin master" in err
    folder = Path(err.split("checked for tokens: ", 1)[1].splitlines()[0])
    try:
        assert (folder / "app.py").is_file() and not (folder / "tests").exists()
    finally:
        shutil.rmtree(folder.parent)
