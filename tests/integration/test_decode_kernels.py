"""tuner/decode_kernels.py on the real embedded model (CPU, fp32): fused projections compute what the separate ones
did, in generate, the static-cache decoder and the slot batcher; a change that alters the logits is put back.
(Liger's kernels need CUDA: on CPU ``use_liger`` changes nothing, and this checks that too.)"""

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuner import decode_kernels
from tuner.batching import END
from tuner.chat import ChatModel, load_chat_model, prompt_token_ids, _stop_ids
from tuner.decode import Sampling, StaticDecoder
from tuner.models import EMBEDDED_MODEL, resolve_model
from tuner.slot_batching import SlotBatcher

from tests.integration.test_batching import conversation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair():
    """The embedded chat model twice: as loaded, and with its projections fused."""
    plain = load_chat_model("base", EMBEDDED_MODEL)
    fused = AutoModelForCausalLM.from_pretrained(resolve_model(EMBEDDED_MODEL), torch_dtype=torch.float32).eval()
    note = decode_kernels.speed_up_decoding(fused)
    return plain, fused, note


def _replies(model, chat: ChatModel, prompts: list[list[int]]) -> list[list[int]]:
    decoder = StaticDecoder(model, graphs=False)
    return [list(decoder.decode(ids, Sampling(max_new_tokens=24), _stop_ids(chat))) for ids in prompts]


def test_fused_projections_share_one_weight_and_decode_the_same_tokens(pair):
    plain, fused, note = pair
    layers = fused.config.num_hidden_layers
    assert note.startswith(f"{2 * layers} fused projections ("), note  # q/k/v, gate/up in every layer; no Liger
    assert "Liger" not in note  # Liger needs CUDA
    attention = fused.model.layers[0].self_attn
    q, k = attention.q_proj.weight, attention.k_proj.weight
    assert k.data_ptr() == q.data_ptr() + q.numel() * q.element_size()  # views of one tensor: no copy kept
    prompts = [prompt_token_ids(plain, *conversation(i)) for i in range(3)]
    expected = _replies(plain.model, plain, prompts)
    assert _replies(fused, plain, prompts) == expected
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        generated = fused.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                   eos_token_id=_stop_ids(plain), pad_token_id=plain.tokenizer.pad_token_id)
    assert generated[0, ids.shape[1]:].tolist() == expected[0][:generated.shape[1] - ids.shape[1]]


def test_the_slot_batcher_on_the_fused_model_gives_each_reply_its_own_tokens(pair):
    plain, fused, _ = pair
    prompts = [prompt_token_ids(plain, *conversation(i)) for i in range(4)]
    expected = _replies(plain.model, plain, prompts)
    batcher = SlotBatcher(fused, threading.Lock(), graphs=False, max_batch=4)
    requests = [batcher.submit(ids, Sampling(max_new_tokens=24), _stop_ids(plain)) for ids in prompts]
    got = []
    for request in requests:
        out = []
        while (item := request.tokens.get(timeout=120)) is not END:
            assert not isinstance(item, BaseException), item
            out.append(item)
        got.append(out)
    batcher.close()
    assert got == expected


def test_a_lever_that_changes_the_logits_is_put_back(monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(resolve_model(EMBEDDED_MODEL), torch_dtype=torch.float32).eval()
    before = decode_kernels._probe_logits(model)
    wrong = decode_kernels._FusedProduct.part
    monkeypatch.setattr(decode_kernels._FusedProduct, "part", lambda self, i, x: wrong(self, i, x) * 1.5)
    note = decode_kernels.speed_up_decoding(model)
    assert note.startswith("kernels left as they were: the outputs of a faster kernel differ from the model's"), note
    assert note.endswith("in model.layers.0.self_attn.q_proj)"), note  # the first one fused, checked first
    monkeypatch.undo()
    assert torch.equal(decode_kernels._probe_logits(model), before)  # restored: the model's own forward again


@pytest.mark.parametrize("factor", [1.0, 1.05])
def test_each_rotary_embedding_is_checked_against_the_one_it_replaces(monkeypatch, factor):
    """Liger's rotary kernel stands in for transformers' function; here (CPU) a stand-in that computes the same,
    or 5 % more on the keys: the first passes, the second is caught, named, and the function is put back."""
    import transformers.models.llama.modeling_llama as llama

    model = AutoModelForCausalLM.from_pretrained(resolve_model(EMBEDDED_MODEL), torch_dtype=torch.float32).eval()
    original = llama.apply_rotary_pos_emb

    def stand_in(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        q, k = original(q, k, cos, sin, position_ids, unsqueeze_dim)
        return q, k * factor

    def use_stand_in(model):
        decode_kernels._ORIGINAL_ROPE[llama.__name__] = original
        llama.apply_rotary_pos_emb = stand_in
        return 1
    monkeypatch.setattr(decode_kernels, "use_liger", use_stand_in)
    monkeypatch.setattr(llama, "apply_rotary_pos_emb", original)  # put back by monkeypatch in any case
    note = decode_kernels.speed_up_decoding(model, fuse=False)
    if factor == 1.0:
        assert note == "Liger norms and rotary (the same outputs)", note
        assert llama.apply_rotary_pos_emb is stand_in  # still in place after the check
        decode_kernels.restore(model)  # no stand-in left in the module's record for the tests after
    else:
        assert note == ("kernels left as they were: the outputs of a faster kernel differ from the model's "
                        "(relative error 0.05 in the rotary embedding of the keys)"), note
        assert llama.apply_rotary_pos_emb is original


def test_unmerged_lora_layers_in_two_kernels_decode_what_peft_decodes():
    """The embedded model with a real PEFT LoRA on all its linears (random A and B, so that it changes the
    answers): with the levers, every LoRA layer runs ``use_lora``'s forward and the decoder gives PEFT's tokens."""
    from peft import LoraConfig, get_peft_model

    plain = load_chat_model("base", EMBEDDED_MODEL)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, lora_dropout=0.1,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    base = AutoModelForCausalLM.from_pretrained(resolve_model(EMBEDDED_MODEL), torch_dtype=torch.float32).eval()
    adapted = get_peft_model(base, config).eval()
    prompts = [prompt_token_ids(plain, *conversation(i)) for i in range(2)]
    expected = _replies(adapted, plain, prompts)
    assert expected != _replies(plain.model, plain, prompts)  # the adapter changes the answers
    note = decode_kernels.speed_up_decoding(adapted, fuse=False)
    layers = 7 * base.config.num_hidden_layers
    assert note.startswith(f"{layers} LoRA layers in two kernels ("), note
    attention = base.model.layers[0].self_attn
    assert "forward" in vars(attention.q_proj) and "forward" in vars(attention.o_proj)
    assert _replies(adapted, plain, prompts) == expected
    decode_kernels.restore(adapted)
    assert "forward" not in vars(attention.q_proj)
