"""Many visitors at once: the replies one model writes at the same time are decoded together (tuner/batching.py),
on the real embedded model, through ``stream_reply`` as the page and the API call it."""

import threading
import time

import pytest
import torch

from tuner.batching import END, Batcher
from tuner.chat import (GenerationSettings, ReplyUsage, load_chat_model, prompt_token_ids, reply, stream_reply,
                        _stop_ids)
from tuner.decode import Sampling
from tuner.models import EMBEDDED_MODEL

pytestmark = pytest.mark.integration

NAMES = ["Alice", "Bruno", "Chen", "Dagny", "Emeka", "Fatima", "Goran", "Hiro", "Ines", "Jonas",
         "Kwame", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq"]
QUESTIONS = ["What is my name?", "What is 2+2?", "Name a color.", "What is the capital of France?",
             "Say hello to me.", "What day comes after Monday?", "Name a fruit.", "What is water made of?",
             "Write a short greeting.", "How many legs does a cat have?"]


def conversation(index: int) -> tuple[str, list[tuple[str, str]], str | None]:
    """Request ``index``: its own question and its own short history (a name no other request mentions)."""
    name = NAMES[index]
    history = [(f"Hi, my name is {name}.", f"Nice to meet you, {name}!")]
    if index % 3 == 0:
        history.append(("I like tea.", f"Tea is lovely, {name}."))
    system = "You are a helpful assistant." if index % 4 == 0 else None
    return QUESTIONS[index % len(QUESTIONS)], history, system


def settings_for(index: int) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=(12, 18, 24)[index % 3], temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def chat():
    return load_chat_model("base", EMBEDDED_MODEL)


def test_twenty_concurrent_visitors_each_get_their_own_reply_equal_to_it_alone(chat):
    alone = []
    for index in range(20):
        usage = ReplyUsage()
        question, history, system = conversation(index)
        text = ""
        for text in stream_reply(chat, question, history, system, settings_for(index), usage=usage):
            pass
        alone.append((text, usage))

    results: list = [None] * 20
    errors: list = []
    start = threading.Barrier(20 + 2)  # and two sampling visitors, whose settings must not leak to the others

    def visit(index: int) -> None:
        try:
            question, history, system = conversation(index)
            usage = ReplyUsage()
            start.wait()
            text = ""
            for text in stream_reply(chat, question, history, system, settings_for(index), usage=usage):
                pass
            results[index] = (text, usage)
        except BaseException as error:  # noqa: BLE001 - counted below
            errors.append(error)

    def sample() -> None:
        try:
            start.wait()
            reply(chat, "Tell me a story.", settings=GenerationSettings(max_new_tokens=24, temperature=1.3,
                                                                        top_p=0.95, repetition_penalty=1.3))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    steps, rows = chat.batcher.steps, chat.batcher.rows_stepped
    threads = [threading.Thread(target=visit, args=(i,)) for i in range(20)]
    threads += [threading.Thread(target=sample) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - started

    assert errors == []
    mean_batch = (chat.batcher.rows_stepped - rows) / max(1, chat.batcher.steps - steps)
    assert mean_batch > 4, f"replies were not decoded together (mean batch {mean_batch:.1f})"
    for index, ((text, usage), (alone_text, alone_usage)) in enumerate(zip(results, alone)):
        assert text == alone_text, f"request {index}: {text!r} alone was {alone_text!r}"
        assert usage == alone_usage
        assert usage.completion_tokens <= settings_for(index).max_new_tokens
        others = [name for i, name in enumerate(NAMES) if i != index]
        assert not any(name in text for name in others), f"request {index} saw another visitor: {text!r}"
    print(f"20 concurrent replies in {elapsed:.1f} s, mean batch {mean_batch:.1f}")


def test_batched_greedy_token_ids_equal_the_request_alone_and_generate(chat):
    """Prompts of different lengths (left padding), and one joining while the others are decoding."""
    batcher = Batcher(chat.model, chat.lock)
    stops = _stop_ids(chat)
    prompts = [prompt_token_ids(chat, *conversation(i)) for i in range(6)]
    greedy = Sampling(max_new_tokens=20)

    def tokens(request) -> list[int]:
        out = []
        while (item := request.tokens.get(timeout=60)) is not END:
            assert not isinstance(item, BaseException), item
            out.append(item)
        return out

    alone = [tokens(batcher.submit(p, greedy, stops)) for p in prompts]
    first = [batcher.submit(p, greedy, stops) for p in prompts[:5]]
    while not first[0].tokens.qsize():  # the batch is decoding: the last one joins it mid-way
        time.sleep(0.01)
    late = batcher.submit(prompts[5], greedy, stops)
    assert [tokens(r) for r in first + [late]] == alone
    for prompt, expected in zip(prompts[:2], alone):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = chat.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                      eos_token_id=stops, pad_token_id=chat.tokenizer.eos_token_id)
        assert out[0, len(prompt):].tolist() == expected


def test_a_visitor_who_leaves_stops_their_generation(chat):
    stream = stream_reply(chat, "Tell me a very long story about dragons.",
                          settings=GenerationSettings(max_new_tokens=400))
    next(stream)
    next(stream)
    assert chat.batcher.busy == 1 and chat.replies == 1
    stream.close()
    deadline = time.monotonic() + 5
    while chat.batcher.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat.batcher.busy == 0 and chat.replies == 0
    steps = chat.batcher.steps
    time.sleep(0.5)
    assert chat.batcher.steps == steps  # nothing decodes for nobody


def test_a_stop_string_ends_the_reply_before_it_and_is_never_shown(chat):
    usage = ReplyUsage()
    pieces = list(stream_reply(chat, "Count from 1 to 10, separated by commas.", stop=["5"],
                               settings=GenerationSettings(max_new_tokens=40), usage=usage))
    assert pieces and "4" in pieces[-1] and not any("5" in piece for piece in pieces)
    assert usage.finish_reason == "stop"
