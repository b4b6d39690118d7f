"""Many visitors at once: 1, 4 and 20 concurrent chat sessions against a running app's OpenAI-compatible API.

    python bench/load.py --url http://127.0.0.1:7860 [--key KEY] [--model ID]
    python bench/load.py --start [--compare-unbatched] [--out bench/results/cpu2-load.txt]

Each session is a conversation of --turns streamed requests on loopback (each turn carries the history so far),
--max-tokens new tokens at most, greedy. Per session count: requests, errors, time to the first token (p50,
p95), and tokens/s of all sessions together, beside the 1-session baseline of the same run. ``--start`` starts
``python -m tuner serve`` (the API alone, embedded model loaded first) on a free port; ``--compare-unbatched``
also runs the same load against a second server with batching off (TUNER_BATCHING=0: one reply at a time,
as before batching), so the table shows both. Bounded: --time-limit seconds per row; turns not started by then
are skipped (and counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["the sea", "volcanoes", "bread", "the moon", "bees", "trains", "chess", "rain", "owls", "glass",
          "maps", "tea", "salt", "kites", "bridges", "clocks", "snow", "paper", "rivers", "music"]


@dataclass
class Turn:
    first_token: float | None = None
    tokens: int = 0
    error: str = ""


@dataclass
class Row:
    sessions: int
    turns: list[Turn] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return sum(1 for t in self.turns if t.error)

    def first_token(self, q: float) -> float:
        values = sorted(t.first_token for t in self.turns if t.first_token is not None)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]

    @property
    def tokens_per_second(self) -> float:
        return sum(t.tokens for t in self.turns) / self.seconds if self.seconds else 0.0


def stream_turn(client, url: str, key: str, model: str, messages: list[dict], max_tokens: int) -> tuple[Turn, str]:
    turn, text = Turn(), ""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    started = time.perf_counter()
    try:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as answer:
            if answer.status_code != 200:
                answer.read()
                return Turn(error=f"HTTP {answer.status_code}: {answer.text[:200]}"), ""
            for line in answer.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Turn(error=chunk["error"].get("message", "error")), text
                for choice in chunk.get("choices", []):
                    piece = choice.get("delta", {}).get("content") or ""
                    if piece and turn.first_token is None:
                        turn.first_token = time.perf_counter() - started
                    text += piece
                if chunk.get("usage"):
                    turn.tokens = chunk["usage"]["completion_tokens"]
    except Exception as error:  # noqa: BLE001 - counted as an error of this turn
        turn.error = f"{type(error).__name__}: {error}"
    return turn, text


def run_row(url: str, key: str, model: str, sessions: int, turns: int, max_tokens: int, time_limit: float) -> Row:
    import httpx

    row = Row(sessions)
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit
    start = threading.Barrier(sessions)

    def session(index: int) -> None:
        topic = TOPICS[index % len(TOPICS)]
        messages = [{"role": "system", "content": f"You are visitor {index}'s assistant."}]
        questions = [f"Tell me something about {topic}.", "Tell me more.", "Summarize that in one line."]
        with httpx.Client(timeout=max(60.0, time_limit)) as client:
            start.wait()
            for number in range(turns):
                if time.monotonic() > deadline:
                    with lock:
                        row.skipped += turns - number
                    return
                messages.append({"role": "user", "content": questions[number % len(questions)]})
                turn, text = stream_turn(client, url, key, model, messages, max_tokens)
                messages.append({"role": "assistant", "content": text})
                with lock:
                    row.turns.append(turn)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row.seconds = time.perf_counter() - began
    return row


def start_server(batching: bool, model: str, log: str | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, TUNER_BATCHING="1" if batching else "0", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-m", "tuner", "serve", "--port", str(port), "--model", model],
                               cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                               stdout=open(log, "a") if log else subprocess.DEVNULL)  # noqa: SIM115 - the server's
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start in 5 minutes")


def table(rows: list[Row], label: str) -> list[str]:
    base = rows[0]
    lines = [f"{label}",
             f"{'sessions':>8} {'turns':>6} {'errors':>6} {'skipped':>7} {'1st token p50':>13} {'p95':>7} "
             f"{'tokens/s':>9} {'x 1 session':>11} {'p50 x 1 session':>15}"]
    for row in rows:
        lines.append(f"{row.sessions:>8} {len(row.turns):>6} {row.errors:>6} {row.skipped:>7} "
                     f"{row.first_token(0.5):>12.2f}s {row.first_token(0.95):>6.2f}s {row.tokens_per_second:>9.1f} "
                     f"{row.tokens_per_second / base.tokens_per_second if base.tokens_per_second else 0:>10.2f}x "
                     f"{row.first_token(0.5) / base.first_token(0.5):>14.2f}x")
    return lines


def measure(url: str, args, label: str) -> list[str]:
    import httpx

    with httpx.Client(timeout=120) as client:  # not timed: the first forward pays for lazy initialisation
        stream_turn(client, url, args.key, args.model, [{"role": "user", "content": "Hi"}], 4)
    rows = []
    for sessions in args.sessions:
        row = run_row(url, args.key, args.model, sessions, args.turns, args.max_tokens, args.time_limit)
        rows.append(row)
        print(f"  {label}: {sessions} sessions done in {row.seconds:.1f} s", file=sys.stderr, flush=True)
        for turn in row.turns:
            if turn.error:
                print(f"    error: {turn.error}", file=sys.stderr)
    return table(rows, label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app or `python -m tuner serve` (default: --start one)")
    parser.add_argument("--start", action="store_true", help="start `python -m tuner serve` for the run")
    parser.add_argument("--compare-unbatched", action="store_true", help="with --start: also one with batching off")
    parser.add_argument("--key", default=os.environ.get("TUNER_API_KEY", ""))
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 20])
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=240, help="seconds per row at most")
    parser.add_argument("--out", help="also write the table here")
    parser.add_argument("--server-log", help="with --start: append the servers' output to this file")
    args = parser.parse_args()
    if not args.url and not args.start:
        parser.error("give --url of a running server, or --start")
    import torch

    header = [f"bench/load.py: {args.turns} streamed turns per session, <= {args.max_tokens} new tokens each, greedy, "
              f"model {args.model}",
              f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"CUDA {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}",
              "first token: from sending the request to its first text; tokens/s: all sessions' new tokens / wall "
              "time", ""]
    lines = list(header)
    if args.url:
        lines += measure(args.url.rstrip("/"), args, f"server {args.url}")
    else:
        modes = [True, False] if args.compare_unbatched else [True]
        for batching in modes:
            process, url = start_server(batching, args.model, args.server_log)
            try:
                label = "batched (continuous batching)" if batching else "unbatched (TUNER_BATCHING=0: one at a time)"
                lines += measure(url, args, label) + [""]
            finally:
                process.terminate()
                process.wait(timeout=30)
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
