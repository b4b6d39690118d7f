"""One JSON record of each supported format → a Conversation, or the problems that stop it.

Each parser takes the decoded object and returns ``(conversation or None, problems)`` where a problem
is ``(field path, message)``; the reader adds file and line.
"""

from __future__ import annotations

from typing import Any, Callable

from tuner.data.records import Conversation, Turn

Problem = tuple[str, str]
Parser = Callable[[dict], tuple["Conversation | None", list[Problem]]]

# the key that gives each JSON format away, in the order they are tried
FORMAT_KEYS = {
    "xtuner": "conversation",
    "openai": "messages",
    "sharegpt": "conversations",
    "alpaca": "instruction",
}
USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "chatgpt", "bing", "bard", "model"}
SYSTEM_ROLES = {"system"}


def guess_record_format(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    for fmt, key in FORMAT_KEYS.items():
        if key in obj:
            return fmt
    return None


def _text(obj: dict, key: str, path: str, problems: list[Problem], required: bool = True) -> str | None:
    """obj[key] as text; None (and a problem) when missing or not a string. A missing optional key is ""."""
    if key not in obj or obj[key] is None:
        if required:
            problems.append((path, "missing"))
            return None
        return ""
    value = obj[key]
    if not isinstance(value, str):
        problems.append((path, f"must be text, not {_type_name(value)}"))
        return None
    return value


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _list(obj: dict, key: str, problems: list[Problem]) -> list | None:
    if key not in obj:
        problems.append((key, "missing"))
        return None
    value = obj[key]
    if not isinstance(value, list):
        problems.append((key, f"must be a list, not {_type_name(value)}"))
        return None
    if not value:
        problems.append((key, "is empty"))
        return None
    return value


def parse_xtuner(obj: dict) -> tuple[Conversation | None, list[Problem]]:
    problems: list[Problem] = []
    items = _list(obj, "conversation", problems)
    if items is None:
        return None, problems
    turns = []
    for index, item in enumerate(items):
        path = f"conversation[{index}]"
        if not isinstance(item, dict):
            problems.append((path, f"must be an object with input and output, not {_type_name(item)}"))
            continue
        system = _text(item, "system", f"{path}.system", problems, required=False)
        question = _text(item, "input", f"{path}.input", problems, required=False)
        answer = _text(item, "output", f"{path}.output", problems)
        if answer is not None and not answer.strip():
            problems.append((f"{path}.output", "the answer is empty"))
        turns.append(Turn(input=question or "", output=answer or "", system=system or ""))
    return (None, problems) if problems else (Conversation(turns), problems)


def parse_alpaca(obj: dict) -> tuple[Conversation | None, list[Problem]]:
    problems: list[Problem] = []
    instruction = _text(obj, "instruction", "instruction", problems)
    extra = _text(obj, "input", "input", problems, required=False)
    answer = _text(obj, "output", "output", problems)
    system = _text(obj, "system", "system", problems, required=False)
    if instruction is not None and not instruction.strip():
        problems.append(("instruction", "is empty"))
    if answer is not None and not answer.strip():
        problems.append(("output", "the answer is empty"))
    turns = _alpaca_history(obj.get("history"), problems)
    if problems:
        return None, problems
    question = f"{instruction}\n{extra}" if extra and extra.strip() else instruction
    turns.append(Turn(input=question, output=answer))
    turns[0].system = system or ""
    return Conversation(turns), problems


def _alpaca_history(history: Any, problems: list[Problem]) -> list[Turn]:
    """Optional earlier turns as [[question, answer], ...] (the Alpaca/LLaMA-Factory convention)."""
    if history is None:
        return []
    if not isinstance(history, list):
        problems.append(("history", f"must be a list of [question, answer] pairs, not {_type_name(history)}"))
        return []
    turns = []
    for index, pair in enumerate(history):
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        if not ok:
            problems.append((f"history[{index}]", "must be a [question, answer] pair of texts"))
            continue
        turns.append(Turn(input=pair[0], output=pair[1]))
    return turns


def parse_openai(obj: dict) -> tuple[Conversation | None, list[Problem]]:
    return _parse_role_messages(obj, "messages", "role", "content")


def parse_sharegpt(obj: dict) -> tuple[Conversation | None, list[Problem]]:
    conversation, problems = _parse_role_messages(obj, "conversations", "from", "value")
    system = _text(obj, "system", "system", problems, required=False)
    if problems:
        return None, problems
    if system and not conversation.turns[0].system:
        conversation.turns[0].system = system
    return conversation, problems


def _message_text(message: dict, key: str, path: str, problems: list[Problem]) -> str | None:
    """Plain text, or OpenAI's list of content parts when every part is text."""
    value = message.get(key)
    if isinstance(value, list) and value and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return _text(message, key, path, problems)


def _parse_role_messages(obj: dict, list_key: str, role_key: str, text_key: str
                         ) -> tuple[Conversation | None, list[Problem]]:
    """Messages with roles → turns: system applies to the next turn; repeated roles are joined by a newline."""
    problems: list[Problem] = []
    messages = _list(obj, list_key, problems)
    if messages is None:
        return None, problems
    turns: list[Turn] = []
    system, question, answer = "", None, None
    for index, message in enumerate(messages):
        path = f"{list_key}[{index}]"
        if not isinstance(message, dict):
            problems.append((path, f"must be an object with {role_key} and {text_key}, not {_type_name(message)}"))
            continue
        role = _text(message, role_key, f"{path}.{role_key}", problems)
        text = _message_text(message, text_key, f"{path}.{text_key}", problems)
        if role is None or text is None:
            continue
        role = role.strip().lower()
        if role in SYSTEM_ROLES:
            if answer is not None:
                turns.append(Turn(question, answer, system))
                system, question, answer = "", None, None
            system = f"{system}\n{text}" if system else text
        elif role in USER_ROLES:
            if answer is not None:
                turns.append(Turn(question, answer, system))
                system, question, answer = "", None, None
            question = text if question is None else f"{question}\n{text}"
        elif role in ASSISTANT_ROLES:
            if question is None:
                problems.append((f"{path}.{role_key}", f"an answer ({role}) must follow a question (user)"))
                continue
            answer = text if answer is None else f"{answer}\n{text}"
        else:
            problems.append((f"{path}.{role_key}", f"unknown role {role!r}: expected system, user or assistant"
                             if list_key == "messages" else f"unknown speaker {role!r}: expected system, human or gpt"))
    if problems:
        return None, problems
    if answer is None:
        return None, [(list_key, "the conversation ends without an assistant answer")]
    turns.append(Turn(question, answer, system))
    for index, turn in enumerate(turns):
        if not turn.output.strip():
            return None, [(list_key, f"turn {index + 1}: the answer is empty")]
    return Conversation(turns), problems


PARSERS: dict[str, Parser] = {
    "xtuner": parse_xtuner,
    "openai": parse_openai,
    "alpaca": parse_alpaca,
    "sharegpt": parse_sharegpt,
}
