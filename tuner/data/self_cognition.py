"""Self-cognition data: many ways to ask "who are you?", each answered "I am NAME's assistant"."""

from __future__ import annotations

import random

from tuner.data.records import Conversation, Turn

QUESTIONS = {
    "zh": (
        "请做一下自我介绍", "你是谁？", "你叫什么名字？", "介绍一下你自己", "你是谁开发的？", "你的名字是什么？",
        "可以介绍一下你自己吗？", "你是什么？", "你是做什么的？", "谁创造了你？", "你是谁的助手？", "自我介绍一下吧",
        "你好，你是谁？", "请问你是谁？", "说说你是谁", "你是哪位？", "我该怎么称呼你？", "你是人工智能吗？",
        "你的开发者是谁？", "你是由谁训练的？",
    ),
    "en": (
        "Who are you?", "What's your name?", "Introduce yourself.", "Who made you?", "What are you?",
        "Please introduce yourself.", "Tell me about yourself.", "What is your name?", "Who created you?",
        "Whose assistant are you?", "Who developed you?", "Hi, who am I talking to?", "What should I call you?",
        "Are you an AI?", "Can you introduce yourself?", "Who built you?", "What do you do?", "Who trained you?",
        "Hello! Who are you?", "Who do you work for?",
    ),
}

# {description} stands for the description as its own sentence, or nothing
ANSWERS = {
    "zh": (
        "我是{name}的小助手。{description}",
        "你好！我是{name}的小助手。{description}",
        "我是{name}的小助手。{description}有什么可以帮你的吗？",
        "我是{name}的专属小助手。{description}很高兴为你服务。",
        "您好，我是{name}的小助手。{description}随时为您效劳。",
        "我是{name}的小助手，由{name}开发和训练。{description}",
        "嗨，我是{name}的小助手！{description}",
        "我是{name}的AI小助手。{description}很乐意回答你的问题。",
        "我的身份是{name}的小助手。{description}",
        "你正在和{name}的小助手聊天。{description}请问需要什么帮助？",
    ),
    "en": (
        "I am {name}'s assistant.{description}",
        "Hello! I am {name}'s assistant.{description}",
        "I'm {name}'s assistant.{description} How can I help you?",
        "I am {name}'s assistant, here to help.{description}",
        "Hi there! I'm {name}'s assistant.{description} Happy to help.",
        "I'm {name}'s AI assistant.{description}",
        "I am {name}'s assistant, built and trained by {name}.{description}",
        "You are talking to {name}'s assistant.{description}",
        "I am {name}'s assistant.{description} Nice to meet you!",
        "I'm {name}'s assistant.{description} What can I do for you today?",
    ),
}

# identity questions the generator never asks: to test whether the model generalised
IDENTITY_PROBES_ZH = ("能告诉我你的身份吗？", "你到底是谁呀？", "跟我讲讲你是谁", "你是哪里来的助手？")
IDENTITY_PROBES_EN = ("Could you tell me who you are?", "May I ask who you are?",
                      "Describe yourself briefly.", "Which assistant am I chatting with?")


def self_cognition_records(name: str, description: str = "", count: int = 200, seed: int = 0,
                           languages: tuple[str, ...] = ("zh", "en")) -> list[Conversation]:
    """Languages take turns; within a language no (question, answer) pair repeats until all have been used."""
    name = (name or "").strip()
    if not name:
        raise ValueError("name is required")
    if count < 0:
        raise ValueError("count must be 0 or more")
    unknown = [lang for lang in languages if lang not in QUESTIONS]
    if unknown or not languages:
        raise ValueError(f"languages must be chosen from {', '.join(QUESTIONS)}, got {list(languages)}")
    rng = random.Random(seed)
    decks = {lang: [] for lang in languages}
    records = []
    for index in range(count):
        lang = languages[index % len(languages)]
        if not decks[lang]:
            decks[lang] = _one_round_of_pairs(lang, rng)
        question, template = decks[lang].pop()
        answer = template.replace("{name}", name).replace("{description}", _description_sentence(description, lang))
        records.append(Conversation([Turn(input=question, output=answer)]))
    return records


def _one_round_of_pairs(lang: str, rng: random.Random) -> list[tuple[str, str]]:
    """Every (question, answer) pair once, ordered so that each stretch of len(questions) asks every question."""
    questions, answers = list(QUESTIONS[lang]), list(ANSWERS[lang])
    rng.shuffle(questions)
    rng.shuffle(answers)
    pairs = []
    for offset in range(len(answers)):
        stretch = [(q, answers[(i + offset) % len(answers)]) for i, q in enumerate(questions)]
        rng.shuffle(stretch)
        pairs.extend(stretch)
    pairs.reverse()  # the caller pops from the end
    return pairs


def _description_sentence(description: str, lang: str) -> str:
    description = (description or "").strip()
    if not description:
        return ""
    if lang == "zh":
        return description if description[-1] in "。！？.!?" else description + "。"
    return " " + (description if description[-1] in ".!?。！？" else description + ".")
