import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tuner(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "tuner", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_data_check_of_a_valid_file_exits_0_with_format_and_count(tmp_path):
    data = tmp_path / "ok.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    * 3, encoding="utf-8")
    run = _tuner("data", "check", data)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "format openai" in run.stdout and "3 records" in run.stdout


def test_data_check_of_a_bad_file_exits_1_with_file_line_lines_and_no_traceback(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"conversation": [{"input": "hi", "output": "yo"}]}\n'
                    '{"conversation": [{"input": "hi", "output": 5}]}\n'
                    '{"conversation": [{"input": "hi", "outp\n', encoding="utf-8")
    run = _tuner("data", "check", data)
    assert run.returncode == 1
    assert f"{data}:2: conversation[0].output:" in run.stdout
    assert f"{data}:3:" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr


def test_self_cognition_then_split_writes_two_xtuner_files(tmp_path):
    out = tmp_path / "alice.jsonl"
    assert _tuner("data", "self-cognition", "--name", "Alice", "--count", "50", "--out", out).returncode == 0
    run = _tuner("data", "split", out, "--test-ratio", "0.2")
    assert run.returncode == 0, run.stderr
    train = (tmp_path / "alice.train.jsonl").read_text(encoding="utf-8").splitlines()
    test = (tmp_path / "alice.test.jsonl").read_text(encoding="utf-8").splitlines()
    assert (len(train), len(test)) == (40, 10)
    assert all("Alice" in line for line in train + test)


def test_every_verb_has_help():
    for verb in ("data", "config", "train", "convert", "merge", "chat", "jobs", "demo"):
        run = _tuner(verb, "--help")
        assert run.returncode == 0 and "usage:" in run.stdout, verb


def test_an_unknown_job_is_one_line_error_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    run = _tuner("jobs", "show", "nope")
    assert run.returncode == 1 and run.stderr.startswith("error: No job 'nope'")
    assert "Traceback" not in run.stderr
