"""How long each conversation is once XTuner has put it in its prompt template."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from tuner.data.records import Conversation

# tokenizers for which XTuner adds no BOS token (xtuner.dataset.utils.get_bos_eos_token_ids)
_NO_BOS_TOKENIZERS = {"QWenTokenizer", "QWen2Tokenizer", "Qwen2TokenizerFast"}
CHARS_PER_TOKEN_ESTIMATE = 3


@dataclass
class DatasetStats:
    records: int
    turns: int
    token_lengths: list[int]
    max_length: int
    over_max_length: int  # conversations XTuner will cut at max_length

    @property
    def mean(self) -> float:
        return statistics.fmean(self.token_lengths) if self.token_lengths else 0.0

    @property
    def median(self) -> float:
        return float(statistics.median(self.token_lengths)) if self.token_lengths else 0.0

    @property
    def maximum(self) -> int:
        return max(self.token_lengths, default=0)


def dataset_stats(records: Iterable[Conversation], tokenizer: Any = None, template: str | Mapping = "default",
                  max_length: int = 2048) -> DatasetStats:
    """Token length of every conversation, counted the way XTuner's encode_fn builds its input_ids.

    Each turn's prompt (SYSTEM + INSTRUCTION), answer (+ SUFFIX) and SEP are encoded separately, as XTuner
    does, plus BOS/EOS tokens where the tokenizer has them. Without a tokenizer: characters / 3, an estimate.
    ``template`` is an XTuner PROMPT_TEMPLATE name or a dict of the same shape.
    """
    records = list(records)
    chosen = prompt_template(template) if isinstance(template, str) else template
    lengths = [_conversation_length(record, tokenizer, chosen) for record in records]
    return DatasetStats(
        records=len(records),
        turns=sum(len(record.turns) for record in records),
        token_lengths=lengths,
        max_length=max_length,
        over_max_length=sum(length > max_length for length in lengths),
    )


def prompt_template(name: str) -> Mapping:
    from tuner.models import prompt_templates  # XTuner is slow to import: only when asked

    PROMPT_TEMPLATE = prompt_templates()

    if name not in PROMPT_TEMPLATE:
        raise ValueError(f"unknown prompt template {name!r}: expected one of {', '.join(sorted(PROMPT_TEMPLATE))}")
    return PROMPT_TEMPLATE[name]


def formatted_pieces(record: Conversation, template: Mapping) -> list[str]:
    """The texts XTuner encodes for this conversation: prompt, answer and separator of each turn."""
    pieces = []
    for number, turn in enumerate(record.turns, start=1):
        prompt = template["INSTRUCTION"].format(input=turn.input, round=number)
        if turn.system:
            prompt = template["SYSTEM"].format(system=turn.system) + prompt
        pieces += [prompt, turn.output + (template.get("SUFFIX") or ""), template.get("SEP") or ""]
    return [piece for piece in pieces if piece]


def _conversation_length(record: Conversation, tokenizer: Any, template: Mapping) -> int:
    pieces = formatted_pieces(record, template)
    if tokenizer is None:
        return math.ceil(sum(len(piece) for piece in pieces) / CHARS_PER_TOKEN_ESTIMATE)
    tokens = sum(len(tokenizer.encode(piece, add_special_tokens=False)) for piece in pieces)
    return tokens + _special_tokens(tokenizer, template, len(record.turns))


def _special_tokens(tokenizer: Any, template: Mapping, turns: int) -> int:
    """BOS before a turn that follows an EOS (or starts), EOS after each answer unless SUFFIX ends it."""
    name = type(tokenizer).__name__
    bos = 0 if name in _NO_BOS_TOKENIZERS else _count_ids(getattr(tokenizer, "bos_token_id", None))
    if name == "ChatGLMTokenizer":
        bos = 2
    if template.get("SUFFIX_AS_EOS", False):
        return bos  # XTuner adds BOS once and no EOS
    return turns * (bos + _count_ids(getattr(tokenizer, "eos_token_id", None)))


def _count_ids(ids: Any) -> int:
    if ids is None:
        return 0
    return len(ids) if isinstance(ids, (list, tuple)) else 1
