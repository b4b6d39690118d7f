"""deploy/hubs/modelscope.py against a fake ModelScope on 127.0.0.1 (modelscope_server.py)."""

from __future__ import annotations

import hashlib

import pytest

from conftest_ms_oxl import (MS_BOB_TOKEN, MS_TOKEN, assert_short, files_containing, home,  # noqa: F401
                             model_folder, ms_server, no_git)
from deploy.hubs.base import PublishError
from deploy.hubs.modelscope import VISIBILITY_PRIVATE, VISIBILITY_PUBLIC, ModelScopeHub


def _assert_token_only_in_headers(server, token=MS_TOKEN):
    assert server.requests, "nothing reached the server"
    for rec in server.requests:
        assert token.encode() not in rec.body, f"token in the body of {rec.method} {rec.path}"
        assert token not in rec.path and token not in str(rec.query), f"token in the URL of {rec.path}"
    for repo in server.repos.values():
        for name, data in repo.files.items():
            assert token.encode() not in data, name
        for commit in repo.commits:
            assert token not in commit["message"]


def test_push_private_uploads_exactly_the_folder(ms_server, model_folder, home, no_git):
    folder, expected = model_folder
    result = ModelScopeHub(ms_server.url).push_folder(folder, "alice/demo-lora", token=MS_TOKEN, private=True,
                                                      commit_message="Add LoRA adapter")

    assert result.repo_id == "alice/demo-lora"
    assert result.url == f"{ms_server.url}/models/alice/demo-lora"
    assert result.files == sorted(expected)
    repo = ms_server.repos["alice/demo-lora"]
    assert (repo.owner, repo.name, repo.created_by) == ("alice", "demo-lora", "alice")
    assert repo.visibility == VISIBILITY_PRIVATE == 1
    assert repo.files == expected  # names and bytes, nothing else
    # one commit, on master; upload_folder numbers its batches: "<message> (batch 1/1)"
    assert len(repo.commits) == 1
    commit = repo.commits[0]
    assert commit["message"] == "Add LoRA adapter (batch 1/1)"
    assert (commit["author"], commit["revision"]) == ("alice", "master")
    assert commit["paths"] == sorted(expected)
    assert result.commit == commit["id"]
    # the 2 MB weights went to the pre-signed blob URL (LFS), the small files inline in the commit
    puts = [r for r in ms_server.requests if r.method == "PUT"]
    weights = expected["adapter_model.safetensors"]
    assert [p.path for p in puts] == [f"/lfs-upload/{hashlib.sha256(weights).hexdigest()}"]
    assert puts[0].body == weights
    assert ms_server.paths() == [
        "POST /api/v1/models",  # create_repo
        "POST /api/v1/models",  # upload_folder's own create-if-missing (answered "exists")
        "POST /api/v1/repos/models/alice/demo-lora/info/lfs/objects/batch",
        f"PUT /lfs-upload/{hashlib.sha256(weights).hexdigest()}",
        "POST /api/v1/repos/models/alice/demo-lora/commit/master",
        "GET /api/v1/models/alice/demo-lora/repo/files",
    ]
    _assert_token_only_in_headers(ms_server)
    # the token travels in headers only
    first = ms_server.requests[0]
    assert first.headers.get("Authorization") == f"Bearer {MS_TOKEN}"
    assert no_git == []
    assert files_containing(home, MS_TOKEN) == []  # no login state written
    assert not (folder / ".ms_upload_cache").exists()  # the pushed folder is left as it was


@pytest.mark.parametrize("variable", ["MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"])
def test_public_by_default_endpoint_from_the_environment(ms_server, model_folder, home, monkeypatch, variable):
    folder, expected = model_folder
    monkeypatch.setenv(variable, ms_server.url)
    result = ModelScopeHub().push_folder(folder, "alice/demo", token=MS_TOKEN)
    assert result.url == f"{ms_server.url}/models/alice/demo"
    assert ms_server.repos["alice/demo"].visibility == VISIBILITY_PUBLIC == 5
    assert ms_server.repos["alice/demo"].files == expected
    assert ms_server.repos["alice/demo"].commits[0]["message"] == "Upload from tuner (batch 1/1)"


def test_name_without_owner_goes_to_the_token_account(ms_server, model_folder, home):
    folder, expected = model_folder
    result = ModelScopeHub(ms_server.url).push_folder(folder, "demo", token=MS_TOKEN)
    assert result.repo_id == "alice/demo"
    assert ms_server.paths()[0] == "GET /openapi/v1/users/me"
    assert ms_server.repos["alice/demo"].files == expected


def test_org_namespace_and_existing_repo_is_reused(ms_server, model_folder, home):
    folder, expected = model_folder
    hub = ModelScopeHub(ms_server.url)
    hub.push_folder(folder, "tuners/demo", token=MS_TOKEN, private=True, commit_message="one")
    (folder / "adapter_config.json").write_bytes(b'{"r": 16}')
    result = hub.push_folder(folder, "tuners/demo", token=MS_TOKEN, private=False, commit_message="two")
    repo = ms_server.repos["tuners/demo"]
    assert [c["message"] for c in repo.commits] == ["one (batch 1/1)", "two (batch 1/1)"]
    assert repo.files["adapter_config.json"] == b'{"r": 16}'
    assert repo.visibility == VISIBILITY_PRIVATE  # an existing repository keeps its visibility
    assert result.files == sorted(expected)
    # the weights were already stored: the second push did not send them again
    assert len([r for r in ms_server.requests if r.method == "PUT"]) == 1


def test_bad_token(ms_server, model_folder, home):
    folder, _ = model_folder
    ms_server.bad_token = True
    with pytest.raises(PublishError) as err:
        ModelScopeHub(ms_server.url).push_folder(folder, "alice/demo", token=MS_TOKEN)
    assert err.value.kind == "bad_token"
    assert "invalid or expired" in err.value.detail
    assert_short(err.value, MS_TOKEN)
    assert ms_server.repos == {}
    _assert_token_only_in_headers(ms_server)


def test_unknown_token_for_a_name_without_owner(ms_server, model_folder, home):
    folder, _ = model_folder
    with pytest.raises(PublishError) as err:
        ModelScopeHub(ms_server.url).push_folder(folder, "demo", token="ms-not-a-known-token-xyz")
    assert err.value.kind == "bad_token"
    assert_short(err.value, "ms-not-a-known-token-xyz")


def test_repo_of_someone_else_is_name_taken(ms_server, model_folder, home):
    folder, _ = model_folder
    theirs = ms_server.add_repo("bob/demo", created_by="bob", files={"README.md": b"bob's"})
    with pytest.raises(PublishError) as err:
        ModelScopeHub(ms_server.url).push_folder(folder, "bob/demo", token=MS_TOKEN)
    assert err.value.kind == "name_taken"
    assert "bob" in err.value.detail
    assert_short(err.value, MS_TOKEN)
    assert theirs.files == {"README.md": b"bob's"} and theirs.commits == []
    _assert_token_only_in_headers(ms_server)


def test_dropped_connection_is_network(ms_server, model_folder, home):
    folder, _ = model_folder
    ms_server.drop_next = 1
    with pytest.raises(PublishError) as err:
        ModelScopeHub(ms_server.url).push_folder(folder, "alice/demo", token=MS_TOKEN)
    assert err.value.kind == "network"
    assert "connection" in err.value.detail.lower()
    assert_short(err.value, MS_TOKEN)
    assert ms_server.repos == {}


def test_closed_port_is_network(model_folder, home):
    folder, _ = model_folder
    with pytest.raises(PublishError) as err:
        # no transport retries: the library's default would retry with back-off for ~15 s
        ModelScopeHub("http://127.0.0.1:9", max_retries=0).push_folder(folder, "alice/demo", token=MS_TOKEN)
    assert err.value.kind == "network"
    assert_short(err.value, MS_TOKEN)


@pytest.mark.parametrize("stage", ["create", "lfs", "commit"])
def test_quota(ms_server, model_folder, home, stage):
    folder, expected = model_folder
    ms_server.quota_at = stage
    with pytest.raises(PublishError) as err:
        ModelScopeHub(ms_server.url).push_folder(folder, "alice/demo", token=MS_TOKEN)
    assert err.value.kind == "quota"
    assert "quota" in err.value.detail
    assert_short(err.value, MS_TOKEN)
    arrived = ms_server.repos["alice/demo"].files if "alice/demo" in ms_server.repos else {}
    # the client commits what it could: with the blob refused, the small files still land
    assert sorted(arrived) == (["README.md", "adapter_config.json", "loss.png"] if stage == "lfs" else [])
    stored = hashlib.sha256(expected["adapter_model.safetensors"]).hexdigest() in ms_server.blobs
    assert stored == (stage == "commit")  # the blob store only refuses at the "lfs" stage
    _assert_token_only_in_headers(ms_server)


def test_refusals_before_any_request(ms_server, model_folder, home, tmp_path):
    folder, _ = model_folder
    hub = ModelScopeHub(ms_server.url)
    for kwargs, kind in [
        (dict(folder=tmp_path / "missing", repo_id="alice/demo", token=MS_TOKEN), "other"),
        (dict(folder=folder, repo_id="alice/demo", token=""), "bad_token"),
        (dict(folder=folder, repo_id="a/b/c", token=MS_TOKEN), "other"),
        (dict(folder=folder, repo_id="alice/demo", token=MS_TOKEN, repo_type="space"), "other"),
    ]:
        with pytest.raises(PublishError) as err:
            hub.push_folder(**kwargs)
        assert err.value.kind == kind, kwargs
    assert ms_server.requests == []


def test_other_account_token_cannot_write_alice(ms_server, model_folder, home):
    folder, _ = model_folder
    with pytest.raises(PublishError) as err:
        ModelScopeHub(ms_server.url).push_folder(folder, "alice/demo", token=MS_BOB_TOKEN)
    assert err.value.kind == "name_taken"
    assert_short(err.value, MS_BOB_TOKEN)
