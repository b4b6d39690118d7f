"""The static-cache decoder (tuner/decode.py) against transformers' ``generate``, on a tiny random Llama."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tuner.chat import ChatModel, GenerationSettings, reply, stream_reply  # noqa: E402
from tuner.decode import DecodeUnsupported, Sampling, StaticDecoder, generation_config_supported  # noqa: E402

VOCAB = 300
STOPS = [2, 5]


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    llm = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        llm.lm_head.weight.mul_(20)  # peaked logits: greedy choices are not near-ties
    return llm


def _generate(model, prompt, sampling: Sampling):
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=sampling.max_new_tokens,
                             min_new_tokens=sampling.min_new_tokens, do_sample=False,
                             repetition_penalty=sampling.repetition_penalty, eos_token_id=STOPS, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("sampling", [Sampling(max_new_tokens=60),
                                      Sampling(max_new_tokens=60, repetition_penalty=1.3, min_new_tokens=25),
                                      Sampling(max_new_tokens=300, min_new_tokens=300)])
def test_greedy_decoding_gives_the_tokens_of_generate(model, sampling):
    decoder = StaticDecoder(model, graphs=False)
    for seed in range(3):
        torch.manual_seed(seed)
        prompt = torch.randint(3, VOCAB, (1, 9 + 7 * seed))
        expected = _generate(model, prompt, sampling)
        assert list(decoder.decode(prompt[0].tolist(), sampling, STOPS)) == expected


def test_a_longer_prompt_moves_to_a_larger_cache_and_back(model):
    decoder = StaticDecoder(model, graphs=False)
    sampling = Sampling(max_new_tokens=40)
    for length in (10, 400, 12):
        torch.manual_seed(length)
        prompt = torch.randint(3, VOCAB, (1, length))
        assert list(decoder.decode(prompt[0].tolist(), sampling, STOPS)) == _generate(model, prompt, sampling)
    assert decoder.capacity == 512
    with pytest.raises(DecodeUnsupported):
        decoder.bucket(5000)


def test_the_self_check_passes_where_the_step_is_the_models(model):
    decoder = StaticDecoder(model, graphs=False)
    decoder.self_check(64)
    sampling = Sampling(max_new_tokens=20)
    prompt = torch.randint(3, VOCAB, (1, 11))
    assert list(decoder.decode(prompt[0].tolist(), sampling, STOPS)) == _generate(model, prompt, sampling)


def test_sampling_follows_the_seed_and_keeps_to_top_k(model):
    decoder = StaticDecoder(model, graphs=False)
    sampling = Sampling(max_new_tokens=30, temperature=0.9, top_p=0.9, top_k=1)  # top-k 1: greedy again
    prompt = list(range(10, 30))
    greedy = list(decoder.decode(prompt, Sampling(max_new_tokens=30), STOPS))
    assert list(decoder.decode(prompt, sampling, STOPS)) == greedy
    wide = Sampling(max_new_tokens=30, temperature=1.0, top_p=0.95, top_k=50)
    torch.manual_seed(3)
    first = list(decoder.decode(prompt, wide, []))
    torch.manual_seed(3)
    assert list(decoder.decode(prompt, wide, [])) == first


def test_generation_configs_with_other_processors_go_to_generate(model):
    assert generation_config_supported(model, {"do_sample": False, "repetition_penalty": 1.1})
    assert not generation_config_supported(model, {"no_repeat_ngram_size": 3})


class _Tokenizer:
    """Token i is the character chr(0x4e00 + i); 0..3 are special and decode to nothing."""
    eos_token_id, pad_token_id = 2, 0

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        ids = [3 + (ord(c) % (VOCAB - 3)) for c in text]
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    def encode(self, text, add_special_tokens=False):
        return self(text)["input_ids"][0].tolist()

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(0x4e00 + i) for i in ids if i > 3)

    def batch_decode(self, sequences, **kwargs):
        return [self.decode(s) for s in sequences]


def test_chat_replies_are_the_same_with_and_without_the_fast_decoder(model):
    template = {"INSTRUCTION": "<u>{input}</u>", "SUFFIX": "", "STOP_WORDS": []}
    plain = ChatModel(model, _Tokenizer(), template, "test")
    fast = ChatModel(model, _Tokenizer(), template, "test", decoder=StaticDecoder(model, graphs=False))
    settings = GenerationSettings(max_new_tokens=40, repetition_penalty=1.0)
    for message in ("hello there", "who are you?"):
        expected = reply(plain, message, settings=settings)
        assert expected and reply(fast, message, settings=settings) == expected
    stream = stream_reply(fast, "a long answer please", settings=GenerationSettings(max_new_tokens=200,
                                                                                   min_new_tokens=200))
    first = next(stream)
    stream.close()  # the decoding thread stops with it
    assert first and not fast.lock.locked()
