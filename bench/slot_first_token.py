"""Where a lone reply's first token goes in the slot batcher (GPU): load a model for chat, then submit replies one
after another with prompts of growing length and print, per reply, the first-token time, the total, and the
seconds spent capturing graphs so far.

    python bench/slot_first_token.py --model /tmp/llama-7b-shape
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/tmp/llama-7b-shape")
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--four-bit", action="store_true", help="load the model in 4 bits")
    parser.add_argument("--adapter", action="store_true",
                        help="a LoRA adapter on it (bench/chat_speed.py's; unmerged in 4 bits)")
    args = parser.parse_args()
    from tuner.batching import END
    from tuner.chat import load_chat_model, prompt_token_ids, _stop_ids
    from tuner.decode import Sampling

    adapter = None
    if args.adapter:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from chat_speed import make_adapter

        adapter = make_adapter(Path(args.model), Path("/tmp/adapter-7b-shape"))
    chat = load_chat_model("adapter" if adapter else "base", args.model, adapter, load_in_4bit=args.four_bit)
    print(f"{chat.description}; decoding: {chat.decoding}", flush=True)
    batcher = chat.slot_batcher
    if not batcher:
        print("no slot batcher")
        return 1
    together = [batcher.submit(prompt_token_ids(chat, f"Tell me about {topic}."), Sampling(max_new_tokens=args.new),
                               _stop_ids(chat)) for topic in ("the sea", "bees", "rain", "tea", "owls", "maps")]
    started = time.perf_counter()
    count = sum(1 for request in together for item in iter(request.tokens.get, END)
                if not isinstance(item, BaseException))
    errors = [r.finish_reason for r in together if r.finish_reason == "error"]
    print(f"6 replies together: {count} tokens in {time.perf_counter() - started:.3f} s, errors {len(errors)}, "
          f"graphs {batcher.graphs}", flush=True)
    for words in (3, 3, 20, 40, 80, 80):
        ids = prompt_token_ids(chat, "word " * words)
        started = time.perf_counter()
        request = batcher.submit(ids, Sampling(max_new_tokens=args.new), _stop_ids(chat))
        first, count = None, 0
        while request.tokens.get(timeout=300) is not END:
            count += 1
            first = first or time.perf_counter() - started
        total = time.perf_counter() - started
        print(f"prompt {len(ids):4d} tokens: first token {first:.3f} s, {count} tokens in {total:.3f} s, "
              f"captures so far {batcher.capture_seconds:.2f} s, prefills {batcher.prefills}, graphs {batcher.graphs}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
