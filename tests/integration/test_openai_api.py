"""The OpenAI-compatible API, served with a Gradio page on one port (server.serve), called with the official
``openai`` client over real HTTP on loopback; replies come from the real embedded model.

The server runs in a subprocess as on a Space with ``hf_oauth`` (SYSTEM=spaces, OAUTH_* set), so the page's
gr.LoginButton adds Gradio's real OAuth routes; their OpenID provider is a loopback stub that only serves the
discovery document (the redirect to it is what is checked)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import openai
import pytest

from tuner.chat import GenerationSettings, load_chat_model, prompt_token_ids, reply
from tuner.models import EMBEDDED_MODEL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-key"
GREEDY = dict(temperature=0, max_tokens=24)
SERVER = textwrap.dedent("""
    import sys
    import gradio as gr
    import server
    from tuner.openai_api import bearer_key

    with gr.Blocks() as page:
        words = gr.Textbox()
        shout = gr.Textbox()
        gr.Button("Shout").click(lambda text: text.upper(), words, shout, api_name="shout")
        gr.LoginButton()
    page.queue()
    server.serve(page, "127.0.0.1", int(sys.argv[1]), authorize=bearer_key(sys.argv[2]), footer_links=["api"])
""")


class _Discovery(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        base = f"http://127.0.0.1:{self.server.server_port}"
        body = json.dumps({"issuer": base, "authorization_endpoint": f"{base}/authorize",
                           "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/jwks"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def provider():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def url(provider, tmp_path_factory):
    port = _free_port()
    script = tmp_path_factory.mktemp("server") / "serve_page_and_api.py"
    script.write_text(SERVER)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TUNER_HOME=str(tmp_path_factory.mktemp("home")),
               SYSTEM="spaces", SPACE_ID="tester/tuner", SPACE_HOST="tester-tuner.hf.space",
               OAUTH_CLIENT_ID="client-id", OAUTH_CLIENT_SECRET="client-secret", OAUTH_SCOPES="openid profile",
               OPENID_PROVIDER_URL=provider, GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen([sys.executable, str(script), str(port), KEY], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start in 3 minutes"
        time.sleep(0.5)
    yield base
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the server did not stop within 30 s of SIGTERM")


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local():
    """The same model in this process: what the API must answer, greedy, token for token."""
    return load_chat_model("base", EMBEDDED_MODEL)


def local_reply(chat, message, history=(), system=None, max_tokens=24):
    return reply(chat, message, list(history), system,
                 GenerationSettings(max_new_tokens=max_tokens, temperature=0.0, top_k=0, top_p=1.0,
                                    repetition_penalty=1.0))


def ask(client, content: str, **kwargs):
    return client.chat.completions.create(model=EMBEDDED_MODEL, messages=[{"role": "user", "content": content}],
                                          **{**GREEDY, **kwargs})


def test_models_lists_the_embedded_model_and_the_presets(client):
    ids = [model.id for model in client.models.list()]
    assert ids[0] == EMBEDDED_MODEL and "Qwen/Qwen2.5-7B-Instruct" in ids
    assert client.models.retrieve(EMBEDDED_MODEL).id == EMBEDDED_MODEL


def test_a_reply_has_the_models_answer_and_counts_its_tokens(client, local):
    completion = ask(client, "What is the capital of France?")
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == local_reply(local, "What is the capital of France?")
    answer = local.tokenizer(choice.message.content, add_special_tokens=False)
    assert completion.usage.prompt_tokens == len(prompt_token_ids(local, "What is the capital of France?"))
    assert completion.usage.completion_tokens == len(answer["input_ids"]) + 1  # and the end-of-turn token
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_a_streamed_reply_adds_up_to_the_whole_reply_and_ends_with_usage(client):
    whole = ask(client, "Name three colors.")
    chunks = list(ask(client, "Name three colors.", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # it did stream
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_a_multi_turn_conversation_reaches_the_model_with_its_system_prompt(client, local):
    messages = [{"role": "system", "content": "You are a pirate."},
                {"role": "user", "content": "My name is Zed."},
                {"role": "assistant", "content": "Ahoy, Zed!"},
                {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}]
    completion = client.chat.completions.create(model=EMBEDDED_MODEL, messages=messages, **GREEDY)
    expected = local_reply(local, "What is my name?", [("My name is Zed.", "Ahoy, Zed!")], "You are a pirate.")
    assert completion.choices[0].message.content == expected
    assert expected != local_reply(local, "What is my name?")  # the history did change the answer


def test_stop_strings_end_the_reply_before_them_streamed_or_not(client):
    question = "Count from 1 to 10, separated by commas."
    whole = ask(client, question, stop=["5", "nine"], max_tokens=40)
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in ask(client, question, stop=["5", "nine"], max_tokens=40, stream=True))
    assert "4" in whole.choices[0].message.content and "5" not in whole.choices[0].message.content
    assert streamed == whole.choices[0].message.content and whole.choices[0].finish_reason == "stop"


def test_max_tokens_cuts_the_reply_with_finish_reason_length(client):
    completion = ask(client, "Tell me a long story about a dragon.", max_tokens=3)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 3


def test_concurrent_clients_each_get_their_own_answer(client, local):
    questions = [f"My friend {name} asked: what is {n} plus {n}?" for n, name in
                 enumerate(["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal"])]
    answers: dict[int, str] = {}

    def call(index: int) -> None:
        stream = index % 2 == 0
        result = ask(client, questions[index], stream=stream)
        answers[index] = ("".join(c.choices[0].delta.content or "" for c in result) if stream
                          else result.choices[0].message.content)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [answers.get(i) for i in range(len(questions))] == [local_reply(local, q) for q in questions]


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


def test_a_body_that_is_not_json_is_400_in_openais_shape(url):
    answer = httpx.post(f"{url}/v1/chat/completions", content=b"{not json",
                        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert answer.status_code == 400
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("field, value", [("temperature", 5), ("max_tokens", 0), ("stop", [1]), ("messages", [])])
def test_a_wrong_field_is_400_naming_it(client, field, value):
    arguments = {"model": EMBEDDED_MODEL, "messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**arguments)
    assert caught.value.param == field


def test_a_conversation_longer_than_the_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "hello " * 9000)
    assert caught.value.code == "context_length_exceeded" and "8192" in caught.value.message


def test_without_the_key_the_api_is_401_and_the_page_stays_open(url):
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=EMBEDDED_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert httpx.post(f"{url}/v1/chat/completions", json={}).status_code == 401
    assert httpx.get(f"{url}/").status_code == 200


def test_the_mounted_page_keeps_its_queue_and_its_login_routes(url, provider):
    from gradio_client import Client

    assert Client(url, verbose=False).predict("hello", api_name="/shout") == "HELLO"
    login = httpx.get(f"{url}/login/huggingface", follow_redirects=False)
    assert login.status_code in (302, 307)
    target = urlparse(login.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{provider}/authorize"
    assert parse_qs(target.query)["redirect_uri"][0].startswith("https://tester-tuner.hf.space/login/callback")
