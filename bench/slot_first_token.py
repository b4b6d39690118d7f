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
    args = parser.parse_args()
    from tuner.batching import END
    from tuner.chat import load_chat_model, prompt_token_ids, _stop_ids
    from tuner.decode import Sampling

    chat = load_chat_model("base", args.model)
    print(f"decoding: {chat.decoding}", flush=True)
    batcher = chat.slot_batcher
    if not batcher:
        print("no slot batcher")
        return 1
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
