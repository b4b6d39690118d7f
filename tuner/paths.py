"""Where the studio keeps things on disk.

``TUNER_HOME`` holds the user's work (data sets, jobs); ``TUNER_CACHE`` holds what can be rebuilt
(the embedded model converted to a Hugging Face folder). Both can be moved with environment
variables so tests, Spaces (``/data``) and several users do not collide.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    path = Path(os.environ.get("TUNER_HOME", Path.home() / "tuner-workspace")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache() -> Path:
    path = Path(os.environ.get("TUNER_CACHE", Path.home() / ".cache" / "tuner")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def jobs_dir() -> Path:
    path = home() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path
