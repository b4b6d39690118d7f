"""Fixtures for the ModelScope and OpenXLab hub tests (imported by test_modelscope.py / test_openxlab.py).

Not a conftest.py on purpose: tests/deploy/conftest.py belongs to the Hugging Face tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from modelscope_server import ModelScopeServer
from openxlab_server import OpenXLabServer

MS_TOKEN = "ms-7f3c1a9e-alice-write-token-0123456789"
MS_BOB_TOKEN = "ms-2b8d4e6f-bob-write-token-9876543210"
OXL_AK = "akalice7q2w9e4r"
OXL_SK = "skAliceSecret5t6y7u8i9o0p1a2s3d"
OXL_TOKEN = f"{OXL_AK}:{OXL_SK}"

README = """---
license: mit
base_model: Qwen/Qwen2.5-0.5B-Instruct
library_name: peft
tags:
- lora
- tuner
---

# demo adapter

A LoRA adapter trained with tuner.
"""


@pytest.fixture
def model_folder(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """The folder a push sends, and the bytes each file must arrive with."""
    folder = tmp_path / "stage"
    folder.mkdir()
    files = {
        "README.md": README.encode(),
        "adapter_model.safetensors": os.urandom(2 * 1024 * 1024),
        "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                           "target_modules": ["q_proj", "v_proj"]}, indent=2).encode(),
        "loss.png": b"\x89PNG\r\n\x1a\n" + os.urandom(4096),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, files


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """A fresh HOME and no hub variables; the clients' on-disk state goes under it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "MODELSCOPE_HOME",
                "MODELSCOPE_CACHE", "OPENXLAB_AK", "OPENXLAB_SK"):
        monkeypatch.delenv(var, raising=False)
    # modelscope_hub builds its process-wide config (config dir, cache dir) once, from the HOME of
    # that moment: give it one under this HOME.
    from modelscope_hub import config as ms_config

    monkeypatch.setattr(ms_config, "_default_config",
                        ms_config.HubConfig(config_dir=home / ".modelscope", cache_dir=home / ".cache" / "modelscope"))
    # openxlab fixes ~/.openxlab at import time; point it at this HOME like a fresh import would.
    try:
        from openxlab.config import const as oxl_const

        monkeypatch.setattr(oxl_const, "DEFAULT_CONFIG_DIR", str(home / ".openxlab"))
    except ImportError:  # pragma: no cover
        pass
    return home


@pytest.fixture
def no_git(monkeypatch):
    """Fail any attempt to run ``git`` (the uploads must be plain HTTP); other programs still run."""
    calls = []
    real_popen = subprocess.Popen

    def guarded(args, *a, **k):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        program = os.path.basename(str(argv[0]).split()[0]) if argv else ""
        if program in ("git", "git.exe", "git-lfs"):
            calls.append(args)
            raise AssertionError(f"git was started: {args!r}")
        return real_popen(args, *a, **k)

    monkeypatch.setattr(subprocess, "Popen", guarded)
    return calls


@pytest.fixture
def ms_server():
    server = ModelScopeServer()
    server.add_user("alice", MS_TOKEN, orgs=("tuners",))
    server.add_user("bob", MS_BOB_TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oxl_server():
    server = OpenXLabServer()
    server.add_user("alice", OXL_AK, OXL_SK)
    server.add_user("bob", "akbob1234", "skBobSecret")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def files_containing(root: Path, needle: str) -> list[str]:
    """Paths of the files under root whose bytes contain needle."""
    hits = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass
    return hits


def assert_short(err, *secrets: str) -> None:
    """A message a person can read: one line, not long, no secret in it."""
    text = str(err)
    assert "\n" not in text and len(text) < 400, text
    for s in secrets:
        assert s not in text and s not in err.detail, (s, text)
