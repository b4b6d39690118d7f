"""The Data tab's histogram bins and the Fine-tune tab's estimate."""

from tuner.data.histogram import length_histogram
from tuner.estimate import ModelShape, estimate_training, model_shape
from tuner.spec import spec_for_model


def test_bins_have_a_round_width_cover_every_length_and_sort_as_text():
    lengths = [3, 7, 31, 32, 66, 66]
    bins = length_histogram(lengths)
    assert sum(count for _, count in bins) == len(lengths)
    assert bins[0] == ("00–04", 1)
    assert [label for label, _ in bins] == sorted(label for label, _ in bins)
    assert bins[-1][0].endswith("69") and bins[-1][1] == 2
    assert length_histogram([]) == []


def test_the_shape_of_a_model_comes_from_its_config_or_its_name(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000, '
                                          '"intermediate_size": 11008, "num_attention_heads": 32}')
    llama7b = model_shape(str(tmp_path))
    assert 6.5e9 < llama7b.parameters < 7.0e9
    assert model_shape("Qwen/Qwen2.5-7B-Instruct").parameters == 7e9
    assert model_shape("internlm/internlm2-chat-1_8b").parameters == 1.8e9
    assert model_shape("some/model") is None


def test_qlora_needs_less_memory_than_lora_and_more_data_takes_longer():
    shape = ModelShape(7e9, 4096, 32, 32000)
    qlora = estimate_training(spec_for_model("x", method="qlora"), shape, 100_000, on_gpu=True)
    lora = estimate_training(spec_for_model("x", method="lora"), shape, 100_000, on_gpu=True)
    assert qlora.memory_gib < lora.memory_gib
    assert 5 < qlora.memory_gib < 16  # the H100 benchmark peaked at 9.2 GiB with these settings
    longer = estimate_training(spec_for_model("x", method="qlora"), shape, 200_000, on_gpu=True)
    assert longer.seconds > qlora.seconds
