"""The Python environment the Hugging Face builder makes for a Gradio Space, made here (../../shared/SPACES.md).

The builder reads the README front matter (``sdk_version``, ``python_version``, ``app_file``), starts from
``python:<python_version>``, upgrades pip, installs ``packages.txt`` with apt, ``pre-requirements.txt``
where it exists, then runs ONE resolver run::

    pip install --no-cache-dir -r requirements.txt "gradio[oauth,mcp]==<sdk_version>" "uvicorn>=0.14.0" \\
        "websockets>=10.4" spaces

``build_space_venv`` does the same in a venv of that Python (pyenv's, else ``python<X.Y>`` on PATH, else
this interpreter, and it says which), cached under ``~/.cache/tuner-tests/space-venvs/<key>`` where the key
is the sha256 of what the builder reads: requirements.txt (and pre-requirements.txt, packages.txt), the
sdk_version and the Python version. A venv counts as built only once its completion marker is written, so a
half-built one (an interrupted run) is built again. ``TUNER_SPACE_VENV_REBUILD=1`` rebuilds anyway (the
builder takes the newest pip and ``spaces`` on every build; a cached venv keeps the ones of its day).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CACHE_ROOT = Path(os.environ.get("TUNER_SPACE_VENVS", Path.home() / ".cache" / "tuner-tests" / "space-venvs"))
MARKER = ".space-venv-complete"
DEFAULT_PYTHON = "3.10"  # the builder's default when the front matter names none
INSTALL_TIMEOUT = 3600


class SpaceBuildError(Exception):
    """The builder's step failed here: the message holds the command and the tail of its output."""


@dataclass(frozen=True)
class FrontMatter:
    sdk: str
    sdk_version: str
    python_version: str
    app_file: str
    raw: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SpaceVenv:
    python: Path  # the venv's interpreter
    base_python: Path  # the interpreter the venv was made from
    python_source: str  # "pyenv", "PATH" or "sys.executable (…)": where base_python came from
    python_version: str  # its full version, e.g. 3.12.1
    key: str
    cached: bool
    install_seconds: float | None  # None when cached
    front: FrontMatter
    log: Path

    @property
    def install_text(self) -> str:
        return "cached" if self.cached else f"{self.install_seconds:.0f} s"

    def describe(self) -> str:
        return (f"Space venv {self.key[:12]}: Python {self.python_version} from {self.python_source} "
                f"({self.base_python}); gradio[oauth,mcp]=={self.front.sdk_version}; install {self.install_text}")


def read_front_matter(folder: Path) -> FrontMatter:
    """The YAML between the first two ``---`` lines of ``folder/README.md``."""
    text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    match = re.match(r"\A---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not match:
        raise SpaceBuildError(f"{folder}/README.md has no YAML front matter (--- … ---) at its top")
    raw = yaml.safe_load(match.group(1)) or {}
    return FrontMatter(sdk=str(raw.get("sdk", "")), sdk_version=str(raw.get("sdk_version", "")),
                       python_version=str(raw.get("python_version", DEFAULT_PYTHON)),
                       app_file=str(raw.get("app_file", "app.py")), raw=raw)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name)[:3])


def find_python(version: str) -> tuple[Path, str]:
    """An interpreter of ``version`` (X.Y): pyenv's newest patch release, else ``pythonX.Y`` on PATH, else
    this one (said so in the returned source)."""
    major_minor = ".".join(version.split(".")[:2])
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [p for p in pyenv.glob(f"{major_minor}*/bin/python{major_minor}")
             if re.fullmatch(rf"{re.escape(major_minor)}(\.\d+)?", p.parent.parent.name) and os.access(p, os.X_OK)]
    if found:
        return max(found, key=_version_key), "pyenv"
    on_path = shutil.which(f"python{major_minor}")
    if on_path:
        return Path(on_path), "PATH"
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Path(sys.executable), f"sys.executable (Python {here}: no Python {major_minor} found, NOT the Space's)"


def full_version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def apt_packages(folder: Path) -> list[str]:
    """The packages the builder would ``apt-get install`` (packages.txt, without comments)."""
    path = Path(folder) / "packages.txt"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def builder_requirements(sdk_version: str) -> list[str]:
    """The builder's one resolver run, less ``--no-cache-dir``: here pip's download cache is kept, so that a
    rebuild does not fetch torch again; what gets installed is the same."""
    return ["install", "-r", "requirements.txt", f"gradio[oauth,mcp]=={sdk_version}", "uvicorn>=0.14.0",
            "websockets>=10.4", "spaces"]


def venv_key(folder: Path, front: FrontMatter, python_version: str) -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pre-requirements.txt", "packages.txt"):
        path = Path(folder) / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<absent>") + b"\0")
    digest.update(f"gradio[oauth,mcp]=={front.sdk_version}\0python {python_version}\0".encode())
    digest.update(" ".join(builder_requirements(front.sdk_version)).encode())
    return digest.hexdigest()


def _run(command: list[str], cwd: Path, log: Path) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ (cd {cwd}) {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=INSTALL_TIMEOUT)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        raise SpaceBuildError(f"the builder's step failed (exit {result.returncode}): {' '.join(command)}\n{tail}")


def _install(venv: Path, folder: Path, front: FrontMatter, base_python: Path, log: Path) -> None:
    log.write_text(f"# Space venv for {folder}\n", encoding="utf-8")
    _run([str(base_python), "-m", "venv", str(venv)], folder, log)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "--upgrade", "pip"], folder, log)  # the builder's first step
    if (folder / "pre-requirements.txt").is_file():
        _run([python, "-m", "pip", "install", "-r", "pre-requirements.txt"], folder, log)
    _run([python, "-m", "pip", *builder_requirements(front.sdk_version)], folder, log)
    _run([python, "-m", "pip", "freeze"], folder, log)


def build_space_venv(folder: Path, cache_root: Path = CACHE_ROOT) -> SpaceVenv:
    """The builder's environment for the Space in ``folder``, built once per key and reused after."""
    folder = Path(folder).resolve()
    front = read_front_matter(folder)
    if front.sdk != "gradio":
        raise SpaceBuildError(f"{folder}/README.md: sdk is {front.sdk!r}; this reproduces the Gradio builder only")
    packages = apt_packages(folder)
    if packages:  # the builder would apt-get install them; this machine's packages are not the image's
        raise SpaceBuildError(f"packages.txt lists {packages}: apt-get install is not reproduced here")
    base_python, source = find_python(front.python_version)
    version = full_version(base_python)
    key = venv_key(folder, front, version)
    cache_root.mkdir(parents=True, exist_ok=True)
    venv, log = cache_root / key, cache_root / f"{key}.log"
    with (cache_root / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per key at a time; a second caller waits, then reuses it
        fresh = os.environ.get("TUNER_SPACE_VENV_REBUILD") == "1"
        cached = (venv / MARKER).is_file() and (venv / "bin" / "python").exists() and not fresh
        seconds = None
        if not cached:
            if venv.exists():
                shutil.rmtree(venv)  # half-built (no marker) or a forced rebuild
            started = time.monotonic()
            _install(venv, folder, front, base_python, log)
            seconds = time.monotonic() - started
            (venv / MARKER).write_text(f"built in {seconds:.0f} s from {folder}\n", encoding="utf-8")
    return SpaceVenv(python=venv / "bin" / "python", base_python=base_python, python_source=source,
                     python_version=version, key=key, cached=cached, install_seconds=seconds, front=front, log=log)
