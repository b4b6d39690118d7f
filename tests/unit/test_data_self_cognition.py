import re

import pytest

from tuner.data import IDENTITY_PROBES_EN, IDENTITY_PROBES_ZH, self_cognition_records
from tuner.data.self_cognition import ANSWERS, QUESTIONS

HAN = re.compile(r"[\u4e00-\u9fff]")


def pairs(records):
    return [(r.turns[0].input, r.turns[0].output) for r in records]


def test_questions_and_answers_are_varied_in_both_languages():
    records = self_cognition_records("Alice", count=200)
    questions = {q for q, _ in pairs(records)}
    answers = {a for _, a in pairs(records)}

    assert len(records) == 200
    assert len({q for q in questions if HAN.search(q)}) >= 15
    assert len({q for q in questions if not HAN.search(q)}) >= 15
    assert len({a for a in answers if HAN.search(a)}) >= 8
    assert len({a for a in answers if not HAN.search(a)}) >= 8


def test_every_answer_names_the_owner_and_matches_the_question_language():
    for question, answer in pairs(self_cognition_records("Alice", count=120)):
        assert "Alice" in answer
        assert bool(HAN.search(question)) == bool(HAN.search(answer)), (question, answer)
        assert ("Alice的" in answer) or ("Alice's" in answer)


def test_description_is_added_as_a_sentence():
    records = self_cognition_records("Bob", "I answer medical questions", count=4, languages=("en",))

    assert all("I answer medical questions." in r.turns[0].output for r in records)


def test_no_answer_has_a_dangling_placeholder_or_separator_without_description():
    for _, answer in pairs(self_cognition_records("Bob", count=400)):
        assert "{" not in answer and "，。" not in answer and not answer.endswith("，")


def test_same_seed_gives_same_records_and_other_seed_differs():
    first = pairs(self_cognition_records("Alice", count=50, seed=7))

    assert first == pairs(self_cognition_records("Alice", count=50, seed=7))
    assert first != pairs(self_cognition_records("Alice", count=50, seed=8))


def test_no_pair_repeats_until_every_combination_is_used():
    per_language = len(QUESTIONS["en"]) * len(ANSWERS["en"])

    once = pairs(self_cognition_records("Alice", count=per_language, languages=("en",)))
    twice = pairs(self_cognition_records("Alice", count=per_language + 1, languages=("en",)))

    assert len(set(once)) == per_language
    assert twice[-1] in once


def test_languages_take_turns_and_one_language_can_be_chosen():
    both = pairs(self_cognition_records("Alice", count=10))
    english = pairs(self_cognition_records("Alice", count=10, languages=("en",)))

    assert [bool(HAN.search(q)) for q, _ in both] == [True, False] * 5
    assert not any(HAN.search(q) for q, _ in english)


def test_held_out_probes_are_not_among_the_training_questions():
    assert IDENTITY_PROBES_ZH and IDENTITY_PROBES_EN
    assert not set(IDENTITY_PROBES_ZH) & set(QUESTIONS["zh"])
    assert not set(IDENTITY_PROBES_EN) & set(QUESTIONS["en"])


def test_name_with_braces_is_taken_literally():
    assert "{x}" in self_cognition_records("{x}", count=1)[0].turns[0].output


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_is_refused(name):
    with pytest.raises(ValueError, match="name is required"):
        self_cognition_records(name)


def test_unknown_language_is_refused():
    with pytest.raises(ValueError):
        self_cognition_records("Alice", languages=("fr",))
