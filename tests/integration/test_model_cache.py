"""Loaded chat models are bounded by memory: the least recently used goes when the next would not fit, never one
that is replying (tuner/model_cache.py), on the real embedded model."""

import pytest

from tuner.chat import ChatLoadError, GenerationSettings, stream_reply
from tuner.model_cache import ChatModelCache, estimate_load_bytes, model_bytes
from tuner.models import EMBEDDED_MODEL

pytestmark = pytest.mark.integration

# Two keys for the same weights (a template given or not): two loads of one embedded model.
FIRST = ("base", EMBEDDED_MODEL)
SECOND = dict(kind="base", model=EMBEDDED_MODEL, template="qwen_chat")
FIRST_KEY = ("base", EMBEDDED_MODEL, "", False, "", None)  # (kind, model, adapter, 4-bit, template, fast decode)


def test_the_estimate_before_loading_is_close_to_what_the_loaded_model_takes():
    cache = ChatModelCache()
    chat = cache.get(*FIRST)
    estimate, real = estimate_load_bytes("base", EMBEDDED_MODEL), model_bytes(chat.model)
    assert 0.8 * real <= estimate <= 1.5 * real


def test_the_least_recently_used_model_is_evicted_when_the_next_would_not_fit_but_never_while_it_replies():
    probe = ChatModelCache()
    one_model = model_bytes(probe.get(*FIRST).model)
    del probe
    cache = ChatModelCache(size=3, memory_limit=int(one_model * 1.5), wait_seconds=1.0)
    first = cache.get(*FIRST)
    replying = stream_reply(first, "Tell me a long story.", settings=GenerationSettings(max_new_tokens=200))
    next(replying)
    with pytest.raises(ChatLoadError, match="replying"):
        cache.get(**SECOND)
    assert cache.loaded() == [FIRST_KEY]
    replying.close()
    second = cache.get(**SECOND)
    assert second is not first and cache.evicted == [FIRST_KEY]
    assert len(cache.loaded()) == 1


def test_a_model_that_can_never_fit_is_refused_with_what_it_needs():
    cache = ChatModelCache(memory_limit=1 << 20)
    with pytest.raises(ChatLoadError, match="needs about"):
        cache.get(*FIRST)

