"""Adapter zips from a visitor or the owner: refused when unsafe, before anything is written."""

import os
import stat
import zipfile

import pytest

from tuner import adapter_upload
from tuner.adapter_upload import AdapterUploadError, unpack_adapter_zip


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            if isinstance(data, zipfile.ZipInfo):
                archive.writestr(data, name)
            else:
                archive.writestr(name, data)
    return path


def _nothing_unpacked(home):
    return not (home / "uploads").exists() or not any((home / "uploads").iterdir())


def test_a_good_adapter_is_unpacked_under_a_generated_name(home, tmp_path):
    path = _zip(tmp_path / "../../evil name.zip", [("x/adapter_config.json", "{}"), ("x/adapter_model.bin", "w")])
    folder = unpack_adapter_zip(path)
    assert (folder / "adapter_config.json").is_file()
    assert folder.is_relative_to(home / "uploads") and "evil" not in str(folder)


@pytest.mark.parametrize("name, message", [("../outside.json", "outside the archive"),
                                           ("a/../../outside.json", "outside the archive"),
                                           ("/etc/cron.d/evil", "absolute path"),
                                           ("C:/evil.json", "absolute path")])
def test_names_that_leave_the_folder_are_refused(home, tmp_path, name, message):
    path = _zip(tmp_path / "a.zip", [("adapter_config.json", "{}"), (name, "x")])
    with pytest.raises(AdapterUploadError, match=message):
        unpack_adapter_zip(path)
    assert _nothing_unpacked(home)
    assert not (tmp_path / "outside.json").exists()


def test_a_link_is_refused(home, tmp_path):
    link = zipfile.ZipInfo("adapter_model.safetensors")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = _zip(tmp_path / "a.zip", [("adapter_config.json", "{}"), ("/etc/passwd", link)])
    with pytest.raises(AdapterUploadError, match="is a link"):
        unpack_adapter_zip(path)
    assert _nothing_unpacked(home)


def test_a_zip_bomb_is_refused_by_its_declared_and_its_real_size(home, tmp_path, monkeypatch):
    monkeypatch.setattr(adapter_upload, "MAX_UNPACKED_BYTES", 1_000_000)
    monkeypatch.setattr(adapter_upload, "MAX_ENTRY_BYTES", 1_000_000)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("adapter_config.json", "{}")
        archive.writestr("adapter_model.bin", b"\0" * 5_000_000)  # 5 MB of zeros: a few KB packed
    assert os.path.getsize(tmp_path / "bomb.zip") < 50_000
    with pytest.raises(AdapterUploadError, match="unpacks to"):
        unpack_adapter_zip(tmp_path / "bomb.zip")
    # The same file with its declared size rewritten small: caught while reading.
    data = bytearray((tmp_path / "bomb.zip").read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):
        start = 0
        while (at := data.find(header, start)) != -1:
            offset = at + (22 if header == b"PK\x03\x04" else 24)
            if int.from_bytes(data[offset:offset + 4], "little") == 5_000_000:
                data[offset:offset + 4] = (100).to_bytes(4, "little")
            start = at + 4
    (tmp_path / "liar.zip").write_bytes(bytes(data))
    with pytest.raises(AdapterUploadError):
        unpack_adapter_zip(tmp_path / "liar.zip")
    assert _nothing_unpacked(home)


def test_too_many_entries_are_refused(home, tmp_path, monkeypatch):
    monkeypatch.setattr(adapter_upload, "MAX_ENTRIES", 10)
    path = _zip(tmp_path / "many.zip", [(f"f{i}", "x") for i in range(11)])
    with pytest.raises(AdapterUploadError, match="11 entries"):
        unpack_adapter_zip(path)
    assert _nothing_unpacked(home)
