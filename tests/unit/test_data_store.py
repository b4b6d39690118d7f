import json

import pytest

from tuner.data import (Conversation, Turn, dataset_path, list_datasets, read_data, read_jsonl_records,
                        save_dataset, write_jsonl)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    return tmp_path


RECORDS = [Conversation([Turn("你是谁？", "我是小助手。", "sys")]), Conversation([Turn("q", "a"), Turn("q2", "a2")])]


def test_write_jsonl_writes_xtuner_conversations_as_utf8(tmp_path):
    path = write_jsonl(RECORDS, tmp_path / "sub" / "out.jsonl")

    lines = path.read_text(encoding="utf-8").splitlines()
    assert "你是谁？" in lines[0]
    assert json.loads(lines[1]) == {"conversation": [{"input": "q", "output": "a"}, {"input": "q2", "output": "a2"}]}
    assert read_data(path).format == "xtuner"


def test_read_jsonl_records_returns_what_write_jsonl_wrote(tmp_path):
    path = write_jsonl(RECORDS, tmp_path / "out.jsonl")

    assert [r.turns for r in read_jsonl_records(path)] == [r.turns for r in RECORDS]


def test_save_dataset_writes_train_test_and_meta_under_tuner_home(home):
    folder = save_dataset("medqa-v1", RECORDS, RECORDS[:1])

    assert folder == home / "datasets" / "medqa-v1"
    assert dataset_path("medqa-v1") == folder / "train.jsonl"
    assert len(read_jsonl_records(folder / "train.jsonl")) == 2
    assert len(read_jsonl_records(folder / "test.jsonl")) == 1
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert (meta["name"], meta["train_records"], meta["test_records"]) == ("medqa-v1", 2, 1)
    assert meta["created"]


def test_saving_again_without_test_records_removes_the_old_test_file(home):
    save_dataset("set", RECORDS, RECORDS)

    folder = save_dataset("set", RECORDS)

    assert not (folder / "test.jsonl").exists()


def test_list_datasets_names_saved_sets_in_order(home):
    save_dataset("b-set", RECORDS)
    save_dataset("自我认知", RECORDS)
    save_dataset("a_set.2", RECORDS)
    (home / "datasets" / "not-a-set").mkdir()

    assert list_datasets() == ["a_set.2", "b-set", "自我认知"]


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "with space", ".hidden", "x" * 101])
def test_unsafe_dataset_names_are_refused(home, name):
    with pytest.raises(ValueError):
        save_dataset(name, RECORDS)
    assert list_datasets() == []


def test_saving_no_records_is_refused(home):
    with pytest.raises(ValueError):
        save_dataset("empty", [])
