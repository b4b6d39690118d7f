"""HuggingFaceHub against the fake hub of hf_server.py, with the real huggingface_hub client."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hub_accounts import ALICE_READ_TOKEN, ALICE_TOKEN, BOB_TOKEN
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from deploy.hubs.base import PublishError, PushResult
from deploy.hubs.huggingface import HuggingFaceHub, whoami

README = """---
license: apache-2.0
base_model: internlm/internlm2-chat-1_8b
tags:
- lora
- tuner
---

# My adapter

A LoRA adapter trained with tuner.
"""


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch, tmp_path):
    """Keep huggingface_hub away from huggingface.co and from any token saved on this machine."""
    from huggingface_hub import constants, file_download

    # Only loopback names resolve during these tests: nothing can reach huggingface.co.
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, f"tests may not resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    # The client's default endpoint: a closed port (both copies of it, kept consistent).
    closed = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    template = closed + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def _png(size: int = 4096) -> bytes:
    # A PNG signature + IHDR header, then noise: binary (NUL bytes) like a real loss plot.
    return (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x00\xc8\x08\x06\x00\x00\x00"
            + os.urandom(size))


@pytest.fixture
def adapter_dir(tmp_path) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "README.md").write_text(README, encoding="utf-8")
    (d / "adapter_model.safetensors").write_bytes(os.urandom(2 * 1024 * 1024))
    (d / "loss.png").write_bytes(_png())
    return d


def _local(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_model_folder(hf_server, adapter_dir):
    hub = HuggingFaceHub(endpoint=hf_server.url)
    result = hub.push_folder(adapter_dir, "alice/my-adapter", token=ALICE_TOKEN, private=True,
                             commit_message="Add LoRA adapter")

    assert isinstance(result, PushResult)
    assert result.url == f"{hf_server.url}/alice/my-adapter"
    assert result.repo_id == "alice/my-adapter"
    assert sorted(result.files) == ["README.md", "adapter_model.safetensors", "loss.png"]

    repo = hf_server.repo("alice/my-adapter")
    assert (repo.owner, repo.private, repo.repo_type, repo.sdk) == ("alice", True, "model", None)
    assert [c.message for c in repo.commits] == ["initial commit", "Add LoRA adapter"]
    assert result.commit == repo.head.oid
    local = _local(adapter_dir)
    assert {f.path for f in repo.head.files} == set(local)
    for f in repo.head.files:
        assert f.data == local[f.path]
    assert set(repo.files) == set(local) | {".gitattributes"}
    # The binary files went through LFS (a PUT of their bytes), the README as a regular file.
    lfs = {f.path: f.lfs for f in repo.head.files}
    assert lfs == {"README.md": False, "adapter_model.safetensors": True, "loss.png": True}
    puts = [r for r in hf_server.requests if r.method == "PUT"]
    assert len(puts) == 2 and sorted(len(r.body) for r in puts) == sorted(
        [len(local["loss.png"]), len(local["adapter_model.safetensors"])])
    # Never Xet: the fake hub always picks the basic LFS transfer.
    assert not any("xet" in r.path.lower() for r in hf_server.requests)


def test_push_space_and_unqualified_name(hf_server, adapter_dir):
    hub = HuggingFaceHub(endpoint=hf_server.url)
    result = hub.push_folder(adapter_dir, "chat-demo", token=ALICE_TOKEN, repo_type="space")
    assert result.repo_id == "alice/chat-demo"
    assert result.url == f"{hf_server.url}/spaces/alice/chat-demo"
    repo = hf_server.repo("alice/chat-demo", "space")
    assert (repo.repo_type, repo.sdk, repo.private) == ("space", "gradio", False)
    assert repo.head.message == "Upload from tuner"
    assert {f.path for f in repo.head.files} == set(_local(adapter_dir))


def test_push_to_own_org(hf_server, adapter_dir):
    result = HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "tuners/shared", token=ALICE_TOKEN)
    assert hf_server.repo("tuners/shared").owner == "tuners"
    assert result.url.endswith("/tuners/shared")


def test_nested_files_and_git_folder(hf_server, adapter_dir, tmp_path):
    (adapter_dir / "checkpoints" / "step-10").mkdir(parents=True)
    (adapter_dir / "checkpoints" / "step-10" / "adapter_config.json").write_text('{"r": 8}')
    (adapter_dir / ".git").mkdir()
    (adapter_dir / ".git" / "config").write_text("[core]\n")
    result = HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/nested", token=ALICE_TOKEN)
    assert "checkpoints/step-10/adapter_config.json" in result.files
    assert not any(".git/" in f for f in result.files)
    api = HfApi(endpoint=hf_server.url, token=ALICE_TOKEN)
    assert sorted(api.list_repo_files("alice/nested")) == sorted([".gitattributes", *result.files])
    top = {e.path for e in api.list_repo_tree("alice/nested")}
    assert "checkpoints" in top and "checkpoints/step-10/adapter_config.json" not in top


def test_second_push_makes_second_commit(hf_server, adapter_dir):
    hub = HuggingFaceHub(endpoint=hf_server.url)
    first = hub.push_folder(adapter_dir, "alice/my-adapter", token=ALICE_TOKEN, commit_message="v1")
    (adapter_dir / "README.md").write_text(README + "\nSecond round of training.\n", encoding="utf-8")
    second = hub.push_folder(adapter_dir, "alice/my-adapter", token=ALICE_TOKEN, commit_message="v2")

    repo = hf_server.repo("alice/my-adapter")
    assert [c.message for c in repo.commits] == ["initial commit", "v1", "v2"]
    assert first.commit != second.commit == repo.head.oid
    # The client skips files whose content the hub already has.
    assert [f.path for f in repo.head.files] == ["README.md"]
    assert repo.files["README.md"].data == (adapter_dir / "README.md").read_bytes()
    assert repo.files["adapter_model.safetensors"].data == (adapter_dir / "adapter_model.safetensors").read_bytes()

    # Pushing the very same folder again changes nothing: no new commit, same head reported.
    third = hub.push_folder(adapter_dir, "alice/my-adapter", token=ALICE_TOKEN, commit_message="v3")
    assert len(repo.commits) == 3 and third.commit == repo.head.oid


def test_snapshot_download_gives_back_the_files(hf_server, adapter_dir, tmp_path):
    hub = HuggingFaceHub(endpoint=hf_server.url)
    hub.push_folder(adapter_dir, "alice/my-adapter", token=ALICE_TOKEN, private=True)

    out = snapshot_download("alice/my-adapter", endpoint=hf_server.url, token=ALICE_TOKEN,
                            cache_dir=tmp_path / "cache")
    got = _local(Path(out))
    assert got.pop(".gitattributes")
    assert got == _local(adapter_dir)

    one = hf_hub_download("alice/my-adapter", "loss.png", endpoint=hf_server.url, token=ALICE_TOKEN,
                          local_dir=tmp_path / "one")
    assert Path(one).read_bytes() == (adapter_dir / "loss.png").read_bytes()

    api = HfApi(endpoint=hf_server.url, token=ALICE_TOKEN)
    assert sorted(api.list_repo_files("alice/my-adapter")) == sorted([".gitattributes", *_local(adapter_dir)])
    assert api.model_info("alice/my-adapter").private is True

    # Private: someone else cannot see it.
    with pytest.raises(Exception) as err:
        snapshot_download("alice/my-adapter", endpoint=hf_server.url, token=BOB_TOKEN, cache_dir=tmp_path / "c2")
    assert "404" in str(err.value) or "not found" in str(err.value).lower()


def test_space_download(hf_server, adapter_dir, tmp_path):
    HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/demo", token=ALICE_TOKEN,
                                                       repo_type="space")
    out = snapshot_download("alice/demo", repo_type="space", endpoint=hf_server.url, token=ALICE_TOKEN,
                            cache_dir=tmp_path / "cache")
    assert (Path(out) / "adapter_model.safetensors").read_bytes() == (
        adapter_dir / "adapter_model.safetensors").read_bytes()


def test_token_never_in_bodies_or_files(hf_server, adapter_dir):
    hub = HuggingFaceHub(endpoint=hf_server.url)
    hub.push_folder(adapter_dir, "alice/my-adapter", token=ALICE_TOKEN)
    hub.push_folder(adapter_dir, "alice/my-space", token=ALICE_TOKEN, repo_type="space")
    secret = ALICE_TOKEN.encode()
    assert hf_server.requests
    # The token travels in the Authorization header (so the check below means something) ...
    assert any(ALICE_TOKEN in r.header("Authorization") for r in hf_server.requests)
    # ... and nowhere else: not in any request path or body, not in any stored file.
    for r in hf_server.requests:
        assert secret not in r.body, r.path
        assert ALICE_TOKEN not in r.path
        assert all(ALICE_TOKEN not in v for k, v in r.headers.items() if k.lower() != "authorization")
    for repo in hf_server.repos.values():
        for c in repo.commits:
            assert all(secret not in f.data for f in c.tree.values())
    assert all(secret not in data for data in hf_server.lfs_store.values())


# ----- failures -------------------------------------------------------------------------------

def _assert_clean(err: PublishError, *secrets: str) -> None:
    text = f"{err} {err.detail!r} {err!r}"
    for s in secrets:
        assert s not in text
    assert "Traceback" not in text and "\n" not in str(err)
    assert len(str(err)) < 500


def test_bad_token(hf_server, adapter_dir):
    bad = "hf_notARealTokenAtAll0123456789abcdef"
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token=bad)
    assert e.value.kind == "bad_token"
    assert "401" in e.value.detail
    _assert_clean(e.value, bad)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert not hf_server.repos


def test_bad_token_unqualified_name(hf_server, adapter_dir):
    bad = "hf_notARealTokenAtAll0123456789abcdef"
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "x", token=bad)
    assert e.value.kind == "bad_token"
    _assert_clean(e.value, bad)


def test_empty_token(hf_server, adapter_dir):
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token="")
    assert e.value.kind == "bad_token"
    assert not hf_server.requests


def test_read_only_token(hf_server, adapter_dir):
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token=ALICE_READ_TOKEN)
    assert e.value.kind == "bad_token"
    _assert_clean(e.value, ALICE_READ_TOKEN)


@pytest.mark.parametrize("create_status", [403, 409])
@pytest.mark.parametrize("private", [False, True])
def test_name_taken(hf_server, adapter_dir, create_status, private):
    hf_server.foreign_create_status = create_status
    bobs = hf_server.add_repo("bob/popular-model", private=private, files={"README.md": b"bob's"})
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "bob/popular-model", token=ALICE_TOKEN)
    assert e.value.kind == "name_taken"
    _assert_clean(e.value, ALICE_TOKEN)
    assert len(bobs.commits) == 2 and bobs.files["README.md"].data == b"bob's"


def test_namespace_of_someone_else(hf_server, adapter_dir):
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "bob/new-name", token=ALICE_TOKEN)
    assert e.value.kind == "name_taken"
    assert not hf_server.repos


@pytest.mark.parametrize("path", [None, "/api/repos/create", "/preupload/", "/commit/"])
def test_dropped_connection(hf_server, adapter_dir, path):
    hf_server.drop_next(1, path_contains=path)
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token=ALICE_TOKEN)
    assert e.value.kind == "network"
    assert any(r.dropped for r in hf_server.requests)
    _assert_clean(e.value, ALICE_TOKEN)
    assert len(str(e.value)) < 300


def test_dropped_lfs_upload_is_retried_by_the_client(hf_server, adapter_dir):
    # huggingface_hub retries the LFS PUT (http_backoff, 1 s wait): one dropped upload is survived.
    hf_server.drop_next(1, path_contains="/__lfs/upload/")
    HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token=ALICE_TOKEN)
    assert any(r.dropped for r in hf_server.requests)
    repo = hf_server.repo("alice/x")
    assert repo.files["adapter_model.safetensors"].data == (adapter_dir / "adapter_model.safetensors").read_bytes()


def test_hub_unreachable(adapter_dir):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=f"http://127.0.0.1:{port}").push_folder(adapter_dir, "alice/x", token=ALICE_TOKEN)
    assert e.value.kind == "network"
    _assert_clean(e.value, ALICE_TOKEN)


@pytest.mark.parametrize("status", [507, 413, 429])
def test_quota(hf_server, adapter_dir, status):
    hf_server.quota_status = status
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token=ALICE_TOKEN)
    assert e.value.kind == "quota"
    assert str(status) in e.value.detail
    _assert_clean(e.value, ALICE_TOKEN)
    assert len(hf_server.repo("alice/x").commits) == 1  # created, nothing committed


def test_server_echoing_the_token_is_scrubbed(hf_server, adapter_dir):
    hf_server.fail("/commit/", 400, "bad commit from client with header {auth}")
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token=ALICE_TOKEN)
    assert e.value.kind == "other"
    assert "***" in str(e.value)
    _assert_clean(e.value, ALICE_TOKEN)


def test_not_found(hf_server, adapter_dir):
    hf_server.fail("/preupload/", 404, "Repository not found")
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(adapter_dir, "alice/x", token=ALICE_TOKEN)
    assert e.value.kind == "not_found"


def test_invalid_readme_metadata(hf_server, tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: [unclosed\n---\n# x\n")
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).push_folder(tmp_path, "alice/x", token=ALICE_TOKEN)
    assert e.value.kind == "other" and "README" in e.value.detail


def test_whoami(hf_server):
    me = whoami(ALICE_TOKEN, endpoint=hf_server.url)
    assert me["name"] == "alice" and [o["name"] for o in me["orgs"]] == ["tuners"]
    with pytest.raises(PublishError) as e:
        HuggingFaceHub(endpoint=hf_server.url).whoami("hf_wrongwrongwrongwrong")
    assert e.value.kind == "bad_token"
    _assert_clean(e.value, "hf_wrongwrongwrongwrong")


def test_default_endpoint_is_the_clients():
    from huggingface_hub import constants

    assert HuggingFaceHub().endpoint == constants.ENDPOINT
    assert HuggingFaceHub("http://x:1/").endpoint == "http://x:1"
