"""The slot batcher (tuner/slot_batching.py) on the real embedded model, its steps run eagerly (CPU): each reply
in its own row of a static cache, joining and leaving between steps, equal to the reply alone and to generate."""

import time

import pytest
import torch

from tuner.batching import END
from tuner.chat import load_chat_model, prompt_token_ids, _stop_ids
from tuner.decode import Sampling
from tuner.models import EMBEDDED_MODEL
from tuner.slot_batching import SlotBatcher, supports_slots

from tests.integration.test_batching import conversation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chat():
    return load_chat_model("base", EMBEDDED_MODEL)


def tokens(request) -> list[int]:
    out = []
    while (item := request.tokens.get(timeout=120)) is not END:
        assert not isinstance(item, BaseException), item
        out.append(item)
    return out


def test_slot_batched_greedy_equals_alone_and_generate_while_rows_join_leave_and_the_cache_grows(chat):
    assert supports_slots(chat.model)
    batcher = SlotBatcher(chat.model, chat.lock, graphs=False, max_batch=8)
    stops = _stop_ids(chat)
    prompts = [prompt_token_ids(chat, *conversation(i)) for i in range(6)]
    lengths = [6, 20, 12, 3, 16, 20]  # rows leave at different steps and free their slots
    alone = [tokens(batcher.submit(p, Sampling(max_new_tokens=n), stops)) for p, n in zip(prompts, lengths)]
    assert batcher.slots == 1 and batcher.length == 256  # one reply at a time: one slot of 256 positions

    prefills = batcher.prefills
    with chat.lock:  # the scheduler waits for the lock: the five are prefilled together (left padded)
        first = [batcher.submit(p, Sampling(max_new_tokens=n), stops) for p, n in zip(prompts[:5], lengths[:5])]
    sampled = batcher.submit(prompts[0], Sampling(max_new_tokens=10, temperature=1.2, top_p=0.9,
                                                  repetition_penalty=1.3), stops)
    while not first[0].tokens.qsize():  # the batch is decoding: the next ones join it mid-way
        time.sleep(0.01)
    late = batcher.submit(prompts[5], Sampling(max_new_tokens=lengths[5]), stops)
    # a long one: its prompt and reply need more than 256 positions, so the cache grows under the others
    long_prompt = prompt_token_ids(chat, "Repeat after me: " + "one two three four " * 60)
    assert len(long_prompt) + 8 > 256
    long = batcher.submit(long_prompt, Sampling(max_new_tokens=8), stops)
    together = [tokens(r) for r in first + [late]]
    assert together == alone
    assert len(tokens(sampled)) <= 10
    long_tokens = tokens(long)
    assert batcher.length >= 512
    assert batcher.rows_stepped / batcher.steps > 1.5, "replies were not decoded together"
    assert batcher.prefills - prefills < 8, "the prompts that came together were prefilled one by one"

    with torch.inference_mode():
        for prompt, expected, count in [(prompts[1], alone[1], lengths[1]), (long_prompt, long_tokens, 8)]:
            ids = torch.tensor([prompt])
            out = chat.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                                      do_sample=False, eos_token_id=stops, pad_token_id=chat.tokenizer.eos_token_id)
            assert out[0, len(prompt):].tolist() == expected
    batcher.stop()


def test_a_reply_that_leaves_frees_its_slot_and_one_that_cannot_fit_is_told(chat):
    batcher = SlotBatcher(chat.model, chat.lock, graphs=False, max_batch=4)
    assert "eagerly" in batcher.warm_up()  # its dummy prefills leave nothing behind
    assert batcher.busy == 0 and batcher._rows == [] and batcher.slots == 4 and batcher.prefills == 3
    prompt = prompt_token_ids(chat, *conversation(0))
    request = batcher.submit(prompt, Sampling(max_new_tokens=300))
    request.tokens.get(timeout=60)
    request.cancel()
    deadline = time.monotonic() + 10
    while batcher.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.busy == 0 and request.finish_reason == "cancelled"
    assert batcher._rows == []

    too_long = batcher.submit(prompt, Sampling(max_new_tokens=batcher.limit))
    items = []
    while (item := too_long.tokens.get(timeout=60)) is not END:
        items.append(item)
    assert too_long.finish_reason == "error" and "over this model's" in str(items[0])

    from tuner.model_cache import chat_bytes, model_bytes

    chat.slot_batcher = batcher  # the model cache counts the batcher's key-value cache with the weights
    try:
        assert chat_bytes(chat) - model_bytes(chat.model) == 4 * batcher.slot_bytes(batcher.length) > 0
    finally:
        chat.slot_batcher = None

    batcher.memory_fraction = 0.0  # no room to grow: a reply that needs a larger cache is refused, not crashed
    big = batcher.submit(prompt, Sampling(max_new_tokens=2000))
    item = big.tokens.get(timeout=60)
    assert isinstance(item, MemoryError) and big.finish_reason == "error"
    batcher.stop()


def test_a_reply_on_the_batch_1_decoder_and_a_batch_of_later_ones_take_turns_step_by_step():
    """The first reply keeps the static-cache decoder; the ones that come while it is written are batched. Both
    take the model's lock token by token (no deadlock, no waiting for the first to end); each equals itself alone."""
    import threading

    from tuner.chat import GenerationSettings, stream_reply

    chat = load_chat_model("base", EMBEDDED_MODEL, fast_decode=True)
    assert chat.decoder is not None
    settings = GenerationSettings(max_new_tokens=40, min_new_tokens=40, temperature=0.0)
    questions = [conversation(i) for i in range(4)]
    alone = []
    for question in questions:
        text = ""
        for text in stream_reply(chat, *question, settings=settings):
            pass
        alone.append(text)
    assert chat.batcher is None  # one at a time: all on the decoder

    results: list = [None] * 4
    started = threading.Event()

    def visit(index: int) -> None:
        text = ""
        for text in stream_reply(chat, *questions[index], settings=settings):
            if index == 0:
                started.set()
        results[index] = text

    first = threading.Thread(target=visit, args=(0,))
    first.start()
    assert started.wait(60)
    others = [threading.Thread(target=visit, args=(i,)) for i in range(1, 4)]
    for thread in others:
        thread.start()
    for thread in [first] + others:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a reply never finished (deadlock?)"
    assert results == alone
    assert chat.batcher and chat.batcher.steps > 0 and not chat.decoder_in_use
