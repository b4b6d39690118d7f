"""The studio itself (this repository) as a Space of one's own: choose its files, stage, check, push.

What goes (``studio_files``)
  In a git work tree: what git would commit, ``git ls-files --cached --others --exclude-standard``,
  i.e. tracked files and untracked ones that .gitignore does not exclude, so .venv/, workspace/,
  test-artifacts/, .whl/, .gpu/ and caches never go; only files that exist now. Outside git (an
  unpacked archive): every file but those under .git, .venv, venv, workspace, test-artifacts,
  __pycache__, .whl, .gpu, .pytest_cache, and *.pyc and .env files.
  In both cases, left out as well:
  - what a running studio never reads: tests/, bench/, .ci/, and .notes/ (engineers' scratch notes,
    untracked but not ignored); .gitignore, scripts/, pytest.ini and requirements*.txt stay (small;
    scripts/start is how the copy runs off a Space);
  - a ``.env`` file anywhere (where people keep tokens), even when git would take it;
  - the user's work and caches: anything under TUNER_HOME or TUNER_CACHE when those lie inside the
    repository, and the staging folder itself;
  - symbolic links that lead outside the repository (they could pull in any file of this machine).

Per hub
  hf: a Gradio Space (``space_sdk="gradio"``), pushed with the same client as everything else.
    ``hardware`` rewrites ``suggested_hardware:`` in README.md's YAML front matter (a README with no
    front matter is left as it is) and, after the push, asks the Hub for that hardware
    (``request_space_hardware``); a refusal (a free account, no payment method) is a warning in
    the result: the Space is pushed all the same and the hardware can be chosen in its settings.
  modelscope: staged (``hardware`` sets ``resource_configuration`` in ms_deploy.json, if there is
    one), then ``ManualSteps`` with the git commands. Not pushed from here because the installed
    client (modelscope 1.40.2 / modelscope_hub 0.5.1) can create a studio but has no way to upload
    its files: its own ``upload`` command takes model and dataset repositories only
    (modelscope_hub/cli/upload.py), and it refuses studio file access with "Studios are application
    containers without a file listing API ... use: git clone https://modelscope.cn/studios/{id}.git"
    (modelscope_hub/api.py). A studio is a git repository on branch master; a push rebuilds it.
  openxlab: staged, then ``ManualSteps``: an OpenXLab app is created in a web form from a GitHub
    repository, which no API here can do.

Secrets: the staged folder is refused (``StageError`` naming the file) if it holds the token in use,
the value of any of ``SECRET_VARIABLES``, or anything shaped like a Hugging Face token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from deploy.hubs.base import PublishError, PushResult
from deploy.stage import StageError, check_no_secrets, check_no_token_patterns

ROOT = Path(__file__).resolve().parent.parent
NOT_FOR_A_RUNNING_STUDIO = ("tests", "bench", ".ci", ".notes")
NEVER_FILES = (".env",)
WALK_SKIPPED_DIRS = (".git", ".venv", "venv", "workspace", "test-artifacts", "__pycache__", ".whl", ".gpu",
                     ".pytest_cache")
DATA_VARIABLES = ("TUNER_HOME", "TUNER_CACHE")
SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "OPENXLAB_AK", "OPENXLAB_SK",
                    "TUNER_OWNER_PASSWORD", "TUNER_API_KEY")
_HARDWARE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*$", re.S | re.M)


@dataclass
class StudioResult(PushResult):
    warnings: list[str] = field(default_factory=list)  # what did not work out, the push itself did


class ManualSteps(PublishError):
    """Nothing was pushed: this hub takes the studio by hand. The message is the steps; ``folder``
    is the staged folder they push."""

    def __init__(self, steps: str, folder: Path):
        super().__init__("other", steps)
        self.folder = folder

    def __str__(self) -> str:
        return self.detail


# ----- which files ----------------------------------------------------------------------------
def studio_files(root: Path = ROOT) -> list[str]:
    """The repository's own files that a studio needs, as sorted relative POSIX paths."""
    root = Path(root).resolve()
    listed = _git_files(root)
    if listed is None:
        listed = _walked_files(root)
    skipped = [d for d in (_inside(root, os.environ.get(v)) for v in DATA_VARIABLES) if d]
    return sorted(p for p in set(listed) if _wanted(root, p, skipped))


def _git_files(root: Path) -> list[str] | None:
    """What git would commit (paths relative to ``root``), or None when ``root`` is not in a work tree."""
    try:
        done = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                               "--exclude-standard"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    listed = [p for p in done.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
    return listed or None  # nothing: ``root`` is ignored by an enclosing repository, so walk it


def _walked_files(root: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in WALK_SKIPPED_DIRS]
        for name in files:
            if not name.endswith(".pyc"):
                out.append((Path(folder) / name).relative_to(root).as_posix())
    return out


def _inside(root: Path, path: str | os.PathLike | None) -> str | None:
    """``path`` relative to ``root`` when it lies inside it (and is not ``root`` itself)."""
    if not path:
        return None
    resolved = Path(path).expanduser().resolve()
    if resolved == root or not resolved.is_relative_to(root):
        return None
    return resolved.relative_to(root).as_posix()


def _wanted(root: Path, rel: str, skipped: list[str]) -> bool:
    parts = rel.split("/")
    if parts[0] in NOT_FOR_A_RUNNING_STUDIO or parts[-1] in NEVER_FILES:
        return False
    if any(rel == d or rel.startswith(d + "/") for d in skipped):
        return False
    path = root / rel
    return path.is_file() and path.resolve().is_relative_to(root)


# ----- staging ---------------------------------------------------------------------------------
def stage_studio(out_dir: Path, hub: str, repo_id: str, hardware: str | None = None, private: bool = False,
                 root: Path | None = None, *, token: str | None = None) -> Path:
    """Write exactly the folder that would be pushed, and check it for secrets.

    ``repo_id`` and ``private`` change nothing in the files (they are the push's); ``token`` is the
    one the push will use (default: the hub's usual variables), scanned for like the others.
    """
    from deploy.publish import resolve_token

    root = Path(root or ROOT).resolve()
    out_dir = Path(out_dir).resolve()
    if out_dir == root or root.is_relative_to(out_dir):
        raise StageError(f"{out_dir} would be emptied first and holds the repository: choose another folder.")
    if hardware and not _HARDWARE.fullmatch(hardware):
        raise ValueError(f"hardware {hardware!r}: use a name such as cpu-basic, t4-small or "
                         "platform/2v-cpu-16g-mem")
    files = studio_files(root)
    inside = _inside(root, out_dir)
    if inside:
        files = [p for p in files if not (p == inside or p.startswith(inside + "/"))]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for rel in files:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hardware and hub == "hf" and (out_dir / "README.md").is_file():
        set_suggested_hardware(out_dir / "README.md", hardware)
    if hardware and hub == "modelscope" and (out_dir / "ms_deploy.json").is_file():
        _set_resource_configuration(out_dir / "ms_deploy.json", hardware)
    check_no_secrets(out_dir, studio_secrets(resolve_token(hub, token)))
    check_no_token_patterns(out_dir)
    return out_dir


def studio_secrets(token: str = "") -> list[str]:
    """The token in use (and its AK / SK halves) and the values of SECRET_VARIABLES."""
    return [s for s in (token, *token.split(":"), *(os.environ.get(v, "") for v in SECRET_VARIABLES)) if s]


def set_suggested_hardware(readme: Path, hardware: str) -> bool:
    """Set ``suggested_hardware:`` in the YAML front matter; False (file untouched) when there is none."""
    text = readme.read_text(encoding="utf-8")
    match = _FRONT_MATTER.match(text)
    if not match:
        return False
    line = f"suggested_hardware: {hardware}"
    block, count = re.subn(r"(?m)^suggested_hardware:.*$", line, match.group(1))
    if not count:
        block += line + "\n"
    readme.write_text(text[:match.start(1)] + block + text[match.end(1):], encoding="utf-8")
    return True


def _set_resource_configuration(path: Path, hardware: str) -> None:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise StageError(f"{path.name}: not valid JSON ({error})") from None
    settings["resource_configuration"] = hardware
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----- pushing ---------------------------------------------------------------------------------
def publish_studio(hub: str, repo_id: str, *, token: str | None = None, hardware: str | None = None,
                   private: bool = False, endpoint: str | None = None, root: Path | None = None,
                   progress: Callable[[str], None] = lambda _: None) -> StudioResult:
    """Push the studio to ``hub`` as ``repo_id``; ModelScope and OpenXLab get ``ManualSteps`` instead."""
    from deploy.publish import HUBS, hub_client, resolve_token

    if hub not in HUBS:
        raise PublishError("other", f"unknown hub {hub!r}; choose one of {', '.join(HUBS)}")
    repo_id = (repo_id or "").strip().strip("/")
    if hub != "hf":
        if hub == "modelscope" and repo_id.count("/") != 1:
            raise PublishError("other", f"give the studio as owner/name, not {repo_id!r}")
        progress("staging files")
        folder = Path(tempfile.mkdtemp(prefix=f"tuner-studio-{hub}-")) / "studio"
        try:
            stage_studio(folder, hub, repo_id, hardware, private, root, token=resolve_token(hub, token))
        except Exception:
            shutil.rmtree(folder.parent, ignore_errors=True)  # it may hold the very file refused
            raise
        steps = modelscope_steps if hub == "modelscope" else openxlab_steps
        raise ManualSteps(steps(folder, repo_id, hardware, private), folder)

    token = resolve_token(hub, token)
    if not token:
        raise PublishError("bad_token", "no token given for hf")
    client = hub_client(hub, endpoint)
    with tempfile.TemporaryDirectory(prefix="tuner-studio-") as tmp:
        progress("staging files")
        folder = stage_studio(Path(tmp) / "studio", hub, repo_id, hardware, private, root, token=token)
        progress(f"uploading {sum(1 for p in folder.rglob('*') if p.is_file())} files to {hub}")
        pushed = client.push_folder(folder, repo_id, token=token, private=private, repo_type="space",
                                    commit_message="Upload the studio from tuner")
    result = StudioResult(**vars(pushed))
    if hardware:
        progress(f"asking for hardware {hardware}")
        refusal = _request_hardware(client, result.repo_id, hardware, token)
        if refusal:
            result.warnings.append(refusal)
    progress(f"done: {result.url}")
    return result


def _request_hardware(client, repo_id: str, hardware: str, token: str) -> str | None:
    """None when the Hub took the request, else a one-line warning (token scrubbed)."""
    from huggingface_hub import HfApi

    try:
        HfApi(endpoint=client.endpoint, library_name="tuner").request_space_hardware(repo_id, hardware, token=token)
    except Exception as exc:  # noqa: BLE001 - the push stands; the hardware is a request
        detail = client._translate(exc, token, f"asking for hardware {hardware}", repo_id).detail
        return (f"the Space is pushed but its hardware was not changed to {hardware} ({detail}); choose it in "
                "the Space's settings (paid hardware needs a PRO account or a payment method)")
    return None


def modelscope_steps(folder: Path, repo_id: str, hardware: str | None, private: bool) -> str:
    owner, name = repo_id.split("/")
    url = f"https://www.modelscope.cn/studios/{owner}/{name}"
    hw = f" --hardware {hardware}" if hardware else ""
    return f"""Nothing was pushed: ModelScope takes a studio's files only by git (its client cannot upload them).
The folder to push is ready and checked for tokens: {folder}
1. Create the studio once, with MODELSCOPE_API_TOKEN set:
     modelscope create {owner}/{name} --repo-type studio --sdk-type gradio --visibility {"private" if private else "public"}{hw}
   (or in the browser: https://www.modelscope.cn/studios/create, SDK Gradio).
2. Push the folder (git asks for a user name: oauth2, and a password: your ModelScope access token):
     cd {folder}
     git init -b master
     git add -A
     git commit -m "Tuner studio"
     git remote add origin {url}.git
     git push -u origin master
   If the push is refused because the new studio already has a starter commit, replace it:
     git push --force -u origin master
3. The push rebuilds the studio: {url}"""


def openxlab_steps(folder: Path, repo_id: str, hardware: str | None, private: bool) -> str:
    name = repo_id.split("/")[-1] or "tuner-studio"
    hw = hardware or "a CPU to start with (GPUs such as A10 or A100 are granted on application)"
    return f"""Nothing was pushed: an OpenXLab app is created in a web form from a GitHub repository.
The folder is ready and checked for tokens: {folder}
1. Create a GitHub repository {name} ({"private: then give OpenXLab access to it" if private else "public"}) and push the folder:
     cd {folder}
     git init -b main
     git add -A
     git commit -m "Tuner studio"
     git remote add origin https://github.com/<your-github-user>/{name}.git
     git push -u origin main
2. Open https://openxlab.org.cn/apps and create an application (创建应用): Gradio, the GitHub repository
   URL above, branch main, entry file app.py, hardware: {hw}.
3. OpenXLab builds it from requirements.txt and packages.txt and serves it on port 7860."""
