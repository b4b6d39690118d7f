"""deploy/hubs/openxlab.py against a fake OpenXLab (model center + sign-in + OSS) on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

import pytest

from conftest_ms_oxl import (OXL_AK, OXL_SK, OXL_TOKEN, assert_short, files_containing, home,  # noqa: F401
                             model_folder, no_git, oxl_server)
from deploy.hubs.base import PublishError
from deploy.hubs.openxlab import OpenXLabHub

needs_oss2 = pytest.mark.skipif(importlib.util.find_spec("oss2") is None,
                                reason="openxlab 0.0.11 cannot be imported without oss2")

SIGN_IN = ("/api/v1/sso-be/api/v1/open/auth", "/api/v1/sso-be/api/v1/open/getJwt")


@pytest.fixture
def own_tmp(monkeypatch, tmp_path):
    """Temporary directories of the push go here, so the test can see what is left behind."""
    where = tmp_path / "tmpdirs"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _assert_secrets_kept(server, uploaded=True):
    """SK and the whole token never leave in a body or a URL; the AK (a key id) only in the sign-in
    bodies, which the AK/SK protocol needs; nothing of them in a stored file."""
    assert server.requests
    for rec in server.requests:
        for secret in (OXL_SK, OXL_TOKEN):
            assert secret.encode() not in rec.body, f"secret in the body of {rec.method} {rec.path}"
            assert secret not in rec.path and secret not in str(rec.query)
            assert secret not in str(rec.headers)
        if rec.path not in SIGN_IN:
            assert OXL_AK.encode() not in rec.body, f"AK in the body of {rec.method} {rec.path}"
    for repo in server.repos.values():
        for name, data in repo.files.items():
            for secret in (OXL_AK, OXL_SK):
                assert secret.encode() not in data, name


@needs_oss2
def test_push_private_uploads_every_file(oxl_server, model_folder, home, own_tmp, no_git):
    folder, expected = model_folder
    from openxlab.config import const

    config_dir_before = const.DEFAULT_CONFIG_DIR
    result = OpenXLabHub(oxl_server.url).push_folder(folder, "alice/demo-lora", token=OXL_TOKEN, private=True,
                                                     commit_message="Add LoRA adapter")

    assert result.repo_id == "alice/demo-lora"
    assert result.url == f"{oxl_server.url}/models/detail/alice/demo-lora"
    assert result.files == sorted(expected)
    assert result.commit == ""  # the 0.0.11 model center has no commits
    repo = oxl_server.repos["demo-lora"]
    assert repo.owner == "alice"
    assert repo.public_status == 0  # private
    assert repo.license == "mit"  # from the README front matter
    assert repo.files == expected  # names and bytes, nothing else
    assert {m.name: m.upload_status for m in repo.models.values()} == {n: 2 for n in expected}  # all "done"
    # each file went to object storage with the short-lived STS key the hub handed out for it
    assert sorted(p["object"].rsplit("/", 1)[-1] for p in oxl_server.oss_puts) == sorted(expected)
    for put in oxl_server.oss_puts:
        sig = next(s for s in oxl_server.sts.values() if s["object"] == put["object"])
        assert put["headers"]["x-oss-security-token"] == sig["stsToken"]
        assert put["bucket"] == sig["bucket"]
    # no commit message exists in this API: it is not sent anywhere
    assert not any(b"Add LoRA adapter" in r.body for r in oxl_server.requests)
    assert [r.path for r in oxl_server.requests[:2]] == list(SIGN_IN)
    _assert_secrets_kept(oxl_server)
    # the JWT went in the Authorization header of the model-center calls
    jwt = next(iter(oxl_server.jwts))
    mc = [r for r in oxl_server.requests if r.path.startswith(("/api/v1/model-center/", "/api/v1/upload-service/"))]
    assert mc and all(r.headers.get("Authorization") == jwt for r in mc)
    assert all(r.headers.get("authorization", "").startswith("OSS STS.") for r in oxl_server.requests
               if r.method == "PUT")
    # login state: the temporary config dir is gone, nothing under HOME, the setting restored
    assert os.listdir(own_tmp) == []
    assert not (home / ".openxlab").exists()
    for secret in (OXL_SK, OXL_AK, jwt):
        assert files_containing(home, secret) == []
    assert const.DEFAULT_CONFIG_DIR == config_dir_before
    assert no_git == []


@needs_oss2
def test_public_by_default_and_a_saved_login_is_left_alone(oxl_server, model_folder, home, own_tmp):
    folder, expected = model_folder
    saved = home / ".openxlab"
    saved.mkdir()
    (saved / "token.json").write_text('{"jwt": "old-jwt-of-someone", "expiration": "2099-01-01 00:00:00", '
                                      '"sso_uid": "x", "refresh_time": "2024-01-01 00:00:00", '
                                      '"refresh_token": "r", "refresh_expiration": "2099-01-01 00:00:00"}')
    before = (saved / "token.json").read_bytes()
    OpenXLabHub(oxl_server.url).push_folder(folder, "alice/demo", token=OXL_TOKEN)
    assert oxl_server.repos["demo"].public_status == 1
    assert oxl_server.repos["demo"].files == expected
    assert (saved / "token.json").read_bytes() == before  # neither used nor overwritten
    assert not any(r.headers.get("Authorization") == "old-jwt-of-someone" for r in oxl_server.requests)
    assert os.listdir(own_tmp) == []


@needs_oss2
def test_second_push_to_own_repo_updates_files(oxl_server, model_folder, home):
    folder, expected = model_folder
    hub = OpenXLabHub(oxl_server.url)
    hub.push_folder(folder, "alice/demo", token=OXL_TOKEN)
    (folder / "adapter_config.json").write_bytes(b'{"r": 16}')
    (folder / "extra.txt").write_bytes(b"new file")
    result = hub.push_folder(folder, "alice/demo", token=OXL_TOKEN, private=True)
    repo = oxl_server.repos["demo"]
    assert repo.files == {**expected, "adapter_config.json": b'{"r": 16}', "extra.txt": b"new file"}
    assert repo.public_status == 1  # an existing repository keeps its visibility
    assert result.files == sorted([*expected, "extra.txt"])
    creates = [r for r in oxl_server.requests if r.path.endswith("createModelRepository")]
    assert len(creates) == 1


@needs_oss2
@pytest.mark.parametrize("case", ["unknown_ak", "wrong_sk", "refused"])
def test_bad_token(oxl_server, model_folder, home, own_tmp, case):
    folder, _ = model_folder
    token = {"unknown_ak": f"akNOBODY:{OXL_SK}", "wrong_sk": f"{OXL_AK}:skWRONGsecret", "refused": OXL_TOKEN}[case]
    oxl_server.bad_token = case == "refused"
    with pytest.raises(PublishError) as err:
        OpenXLabHub(oxl_server.url).push_folder(folder, "alice/demo", token=token)
    assert err.value.kind == "bad_token"
    assert_short(err.value, token, *token.split(":"))
    assert oxl_server.repos == {}
    assert os.listdir(own_tmp) == []
    for rec in oxl_server.requests:
        assert token.split(":")[1].encode() not in rec.body


@needs_oss2
def test_repo_of_someone_else_is_name_taken(oxl_server, model_folder, home):
    folder, _ = model_folder
    theirs = oxl_server.add_repo("demo", owner="bob")
    with pytest.raises(PublishError) as err:
        OpenXLabHub(oxl_server.url).push_folder(folder, "alice/demo", token=OXL_TOKEN)
    assert err.value.kind == "name_taken"
    assert "already exists" in err.value.detail
    assert_short(err.value, OXL_TOKEN, OXL_AK, OXL_SK)
    assert theirs.files == {} and oxl_server.oss_puts == []
    _assert_secrets_kept(oxl_server)


@needs_oss2
def test_dropped_connection_is_network(oxl_server, model_folder, home, own_tmp):
    folder, _ = model_folder
    oxl_server.drop_next = 1
    with pytest.raises(PublishError) as err:
        OpenXLabHub(oxl_server.url).push_folder(folder, "alice/demo", token=OXL_TOKEN)
    assert err.value.kind == "network"
    assert "connection" in err.value.detail.lower()
    assert_short(err.value, OXL_TOKEN, OXL_AK, OXL_SK)
    assert os.listdir(own_tmp) == []


@needs_oss2
def test_quota(oxl_server, model_folder, home):
    folder, _ = model_folder
    oxl_server.quota = True
    with pytest.raises(PublishError) as err:
        OpenXLabHub(oxl_server.url).push_folder(folder, "alice/demo", token=OXL_TOKEN)
    assert err.value.kind == "quota"
    assert "quota" in err.value.detail
    assert_short(err.value, OXL_TOKEN, OXL_AK, OXL_SK)
    assert oxl_server.oss_puts == [] and oxl_server.repos["demo"].files == {}
    _assert_secrets_kept(oxl_server)


def test_refusals_before_any_request(oxl_server, model_folder, home, tmp_path):
    folder, _ = model_folder
    (tmp_path / "nested" / "sub").mkdir(parents=True)
    (tmp_path / "nested" / "sub" / "a.bin").write_bytes(b"x")
    hub = OpenXLabHub(oxl_server.url)
    for kwargs, kind in [
        (dict(folder=folder, repo_id="alice/demo", token="no-colon-here"), "bad_token"),
        (dict(folder=folder, repo_id="alice/demo", token=":only-sk"), "bad_token"),
        (dict(folder=folder, repo_id="demo", token=OXL_TOKEN), "other"),
        (dict(folder=folder, repo_id="al.ice/demo", token=OXL_TOKEN), "other"),
        (dict(folder=folder, repo_id="alice/demo", token=OXL_TOKEN, repo_type="dataset"), "other"),
        (dict(folder=tmp_path / "nested", repo_id="alice/demo", token=OXL_TOKEN), "other"),
        (dict(folder=tmp_path / "missing", repo_id="alice/demo", token=OXL_TOKEN), "other"),
    ]:
        with pytest.raises(PublishError) as err:
            hub.push_folder(**kwargs)
        assert err.value.kind == kind, kwargs
        assert_short(err.value, OXL_SK, "only-sk")
    assert oxl_server.requests == []


def test_without_oss2_the_client_cannot_load(oxl_server, model_folder, home, monkeypatch):
    folder, _ = model_folder
    monkeypatch.setitem(sys.modules, "openxlab.model.clients.openapi_client", None)  # import fails
    with pytest.raises(PublishError) as err:
        OpenXLabHub(oxl_server.url).push_folder(folder, "alice/demo", token=OXL_TOKEN)
    assert err.value.kind == "other"
    assert "oss2" in err.value.detail
    assert oxl_server.requests == []


def test_default_hosts():
    hub = OpenXLabHub()
    assert hub.endpoint == "https://openapi.openxlab.org.cn"
    assert hub.oss_endpoint == "https://oss-cn-shanghai.aliyuncs.com"
    assert hub.web_url == "https://openxlab.org.cn"
    local = OpenXLabHub("http://127.0.0.1:8000/")
    assert local.endpoint == local.oss_endpoint == local.web_url == "http://127.0.0.1:8000"

