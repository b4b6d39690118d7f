import pytest

from tuner.data import Conversation, Turn, dataset_stats

TEMPLATE = {"SYSTEM": "S:{system}\n", "INSTRUCTION": "U{round}:{input}\nA:", "SUFFIX": "</s>", "SEP": "\n"}


class CharTokenizer:
    """One token per character; records what it was asked to encode."""

    def __init__(self, bos_token_id=None, eos_token_id=None):
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.seen = []

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        self.seen.append(text)
        return list(range(len(text)))


def test_length_counts_the_conversation_as_the_template_formats_it():
    tokenizer = CharTokenizer()
    record = Conversation([Turn("hi", "yo", "sys"), Turn("more", "ok")])

    stats = dataset_stats([record], tokenizer, TEMPLATE)

    assert "".join(tokenizer.seen) == "S:sys\nU1:hi\nA:yo</s>\nU2:more\nA:ok</s>\n"
    assert stats.token_lengths == [len("S:sys\nU1:hi\nA:yo</s>\nU2:more\nA:ok</s>\n")]
    assert (stats.records, stats.turns) == (1, 2)


def test_bos_and_eos_are_counted_per_turn_unless_the_suffix_is_the_eos():
    record = Conversation([Turn("a", "b"), Turn("c", "d")])
    plain = dataset_stats([record], CharTokenizer(), TEMPLATE).token_lengths[0]

    with_eos = dataset_stats([record], CharTokenizer(1, 2), TEMPLATE).token_lengths[0]
    suffix_as_eos = dataset_stats([record], CharTokenizer(1, 2), {**TEMPLATE, "SUFFIX_AS_EOS": True}).token_lengths[0]

    assert with_eos == plain + 4
    assert suffix_as_eos == plain + 1


def test_over_max_length_counts_conversations_longer_than_the_limit():
    records = [Conversation([Turn("q" * n, "a")]) for n in (1, 50, 100)]

    stats = dataset_stats(records, CharTokenizer(), TEMPLATE, max_length=62)  # lengths 13, 62, 112

    assert stats.max_length == 62
    assert stats.over_max_length == 1
    assert stats.maximum == max(stats.token_lengths) > 100
    assert stats.median == sorted(stats.token_lengths)[1]
    assert stats.mean == pytest.approx(sum(stats.token_lengths) / 3)


def test_without_a_tokenizer_length_is_characters_over_three():
    record = Conversation([Turn("x" * 28, "y" * 30)])  # "U1:" + 28 + "\nA:" + 30 + "</s>" + "\n" = 69 chars

    assert dataset_stats([record], None, TEMPLATE).token_lengths == [23]


def test_empty_data_set_has_zero_statistics():
    stats = dataset_stats([], CharTokenizer(), TEMPLATE)

    assert (stats.records, stats.mean, stats.median, stats.maximum, stats.over_max_length) == (0, 0.0, 0.0, 0, 0)


def test_template_can_be_named_as_in_xtuner():
    record = Conversation([Turn("hi", "yo")])
    tokenizer = CharTokenizer()

    dataset_stats([record], tokenizer, "internlm2_chat")

    assert tokenizer.seen[0] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.seen[1] == "yo<|im_end|>"


def test_unknown_template_name_is_refused():
    with pytest.raises(ValueError, match="unknown prompt template"):
        dataset_stats([], None, "no-such-template")
