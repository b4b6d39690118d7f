"""A fake OpenXLab on 127.0.0.1: the part of its HTTP API that ``openxlab`` 0.0.11 uses to create a
model repository and upload weight files, plus the Aliyun-OSS PUT that ``oss2`` makes.

Endpoints (paths as the client builds them from ``https://openapi.openxlab.org.cn``):

* ``POST /api/v1/sso-be/api/v1/open/auth``       {ak} -> nonce + algorithm (HmacSHA256)
* ``POST /api/v1/sso-be/api/v1/open/getJwt``     {ak, d}; d = base64(HMAC-SHA256(sk, nonce)) -> JWT
* ``POST /api/v1/model-center/api/v1/cli/repository/createModelRepository``
* ``POST /api/v1/model-center/api/v1/cli/repository/getRepositoryModelList``   (listing)
* ``POST /api/v1/model-center/api/v1/cli/repository/updateFileUploadStatus``   (1 = start, 2 = done)
* ``POST /api/v1/upload-service/api/v1/getUploadSignature``  -> STS credentials for one object
* ``PUT  /{bucket}/{object}``   the OSS upload (oss2 uses path style for an IP endpoint); checks the
  ``OSS <accessKeyId>:<signature>`` header and the STS token the signature call handed out.

Answers use the client's envelope ``{msgCode, msg, traceId, data: {msgCode, msg, traceId, data}}``;
a refusal has an inner ``msgCode`` other than "10000" (the client raises ValueError with its msg).
A model-center call without a valid JWT gets HTTP 401.

Switches: ``bad_token`` (the AK/SK is refused at sign-in), ``quota`` (upload signature refused for
lack of space), ``drop_next`` (close the connection of the next N requests without an answer).
Repositories of another account: ``add_repo(name, owner)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from modelscope_server import RecordingServer, Reply

OK = "10000"
PREFIX_MC = "/api/v1/model-center/api/v1/cli/repository/"
PREFIX_SSO = "/api/v1/sso-be/api/v1/open/"


def _envelope(inner_code: str, msg: str, data=None) -> dict:
    trace = secrets.token_hex(8)
    return {"msgCode": OK, "msg": "success", "traceId": trace,
            "data": {"msgCode": inner_code, "msg": msg, "traceId": trace, "data": data}}


def _ok(data) -> tuple[int, dict]:
    return 200, _envelope(OK, "success", data)


def _refuse(code: str, msg: str) -> Reply:
    return Reply(200, _envelope(code, msg, None))


def _shanghai(delta: timedelta) -> str:
    return (datetime.now(timezone(timedelta(hours=8))) + delta).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class XModel:
    name: str
    weight_name: str
    model_id: int
    upload_status: int = 0
    object_name: str = ""


@dataclass
class XRepo:
    name: str
    owner: str
    public_status: int
    license: str = ""
    repository_id: int = 0
    models: dict[str, XModel] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # weight name -> bytes


class OpenXLabServer(RecordingServer):
    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, tuple[str, str]] = {}  # ak -> (sk, username)
        self.nonces: dict[str, str] = {}  # ak -> last nonce
        self.jwts: dict[str, str] = {}  # jwt -> username
        self.repos: dict[str, XRepo] = {}  # repository name -> repo
        self.sts: dict[str, dict] = {}  # accessKeyId -> signature handed out
        self.oss_puts: list[dict] = []  # {"bucket", "object", "headers", "body"}
        self.bad_token = False
        self.quota = False
        self._ids = iter(range(1000, 10**6))

    def add_user(self, username: str, ak: str, sk: str) -> None:
        self.keys[ak] = (sk, username)

    def add_repo(self, name: str, owner: str, public: bool = True) -> XRepo:
        repo = XRepo(name, owner, 1 if public else 0, repository_id=next(self._ids))
        self.repos[name] = repo
        return repo

    # ----------------------------------------------------------------------------------------
    def _user(self, headers) -> str:
        jwt = (headers.get("Authorization") or "").strip()
        if jwt not in self.jwts:
            raise Reply(401, {"msgCode": "401", "msg": "Unauthorized", "traceId": secrets.token_hex(8)})
        return self.jwts[jwt]

    def _own_repo(self, user: str, name: str) -> XRepo:
        repo = self.repos.get(name)
        if repo is None or repo.owner != user:  # another account's repository is invisible
            raise _refuse("A0404", f"repository {name} not exist")
        return repo

    def route(self, method, path, query, headers, body):
        req = json.loads(body or b"{}") if method == "POST" else {}

        if method == "POST" and path == PREFIX_SSO + "auth":
            ak = req.get("ak", "")
            if self.bad_token or ak not in self.keys:
                raise _refuse("A0211", "access key is invalid")
            self.nonces[ak] = secrets.token_hex(16)
            return _ok({"nonce": self.nonces[ak], "algorithm": "HmacSHA256"})

        if method == "POST" and path == PREFIX_SSO + "getJwt":
            ak, d = req.get("ak", ""), req.get("d", "")
            sk, username = self.keys.get(ak, ("", ""))
            nonce = self.nonces.pop(ak, "")
            want = base64.b64encode(hmac.new(sk.encode(), nonce.encode(), hashlib.sha256).digest()).decode()
            if self.bad_token or not sk or not nonce or not hmac.compare_digest(want, d):
                raise _refuse("A0212", "signature does not match the secret key")
            jwt = "eyJ" + secrets.token_urlsafe(24)
            self.jwts[jwt] = username
            return _ok({"jwt": jwt, "expiration": _shanghai(timedelta(hours=1)), "sso_uid": f"uid-{username}",
                        "refresh_token": secrets.token_urlsafe(16),
                        "refresh_expiration": _shanghai(timedelta(days=7))})

        if method == "POST" and path == PREFIX_MC + "createModelRepository":
            user = self._user(headers)
            name = req.get("name", "")
            if name in self.repos:
                raise _refuse("A0409", f"repository name {name} already exists")
            repo = XRepo(name, user, int(req.get("publicStatus", 1)), req.get("license", ""),
                         repository_id=next(self._ids))
            for m in req.get("models") or []:
                repo.models[m["name"]] = XModel(m["name"], m["weightName"], next(self._ids))
            self.repos[name] = repo
            return _ok({"repositoryId": repo.repository_id})

        if method == "POST" and path == PREFIX_MC + "getRepositoryModelList":
            repo = self._own_repo(self._user(headers), req.get("repoName", ""))
            return _ok({"repositoryId": repo.repository_id, "models": [
                {"name": m.name, "weightName": m.weight_name, "modelId": m.model_id,
                 "uploadStatus": m.upload_status, "size": len(repo.files.get(m.weight_name, b""))}
                for m in repo.models.values()]})

        if method == "POST" and path == PREFIX_MC + "updateFileUploadStatus":
            user = self._user(headers)
            repo = self._own_repo(user, req.get("repoName", ""))
            for m in req.get("models") or []:  # models new since the repository was created
                repo.models.setdefault(m["name"], XModel(m["name"], m["weightName"], next(self._ids)))
            by_weight = {m.weight_name: m for m in repo.models.values()}
            objects = []
            for file_name in req.get("fileNames") or []:
                model = by_weight.get(file_name)
                if model is None:
                    raise _refuse("A0400", f"no model with weight {file_name}")
                model.upload_status = int(req.get("uploadStatus") or 0)
                model.object_name = f"model-center/{repo.repository_id}/{model.model_id}/{file_name}"
                objects.append({"modelName": model.name, "modelId": model.model_id,
                                "weightName": file_name, "objectName": model.object_name})
            return _ok({"repositoryId": repo.repository_id, "uid": f"uid-{user}", "objects": objects})

        if method == "POST" and path == "/api/v1/upload-service/api/v1/getUploadSignature":
            self._user(headers)
            if self.quota:
                raise _refuse("A0507", "storage quota exceeded for this account")
            key_id = "STS." + secrets.token_hex(8)
            sig = {"accessKeyId": key_id, "accessKeySecret": secrets.token_hex(16),
                   "stsToken": secrets.token_urlsafe(24), "bucket": "xlab-model-center",
                   "object": req.get("fileName", ""),
                   "callback": base64.b64encode(b'{"callbackUrl":"https://example.invalid/cb"}').decode(),
                   "callbackVar": base64.b64encode(json.dumps(req.get("data") or {}).encode()).decode()}
            self.sts[key_id] = sig
            return _ok(sig)

        if method == "PUT":  # OSS, path style: /{bucket}/{object}
            bucket, _, obj = path.lstrip("/").partition("/")
            auth = headers.get("Authorization") or ""
            key_id = auth[4:].split(":")[0] if auth.startswith("OSS ") else ""
            sig = self.sts.get(key_id)
            if sig is None or headers.get("x-oss-security-token") != sig["stsToken"] or \
                    sig["bucket"] != bucket or sig["object"] != obj:
                raise Reply(403, b"<Error><Code>AccessDenied</Code><Message>bad STS</Message></Error>",
                            {"Content-Type": "application/xml", "x-oss-request-id": secrets.token_hex(8)})
            self.oss_puts.append({"bucket": bucket, "object": obj, "headers": dict(headers.items()), "body": body})
            for repo in self.repos.values():
                for m in repo.models.values():
                    if m.object_name == obj:
                        repo.files[m.weight_name] = body
            extra = {"ETag": '"%s"' % hashlib.md5(body).hexdigest().upper(),
                     "x-oss-request-id": secrets.token_hex(8)}
            try:  # the CRC oss2 checks the upload against, when it can compute one
                from oss2.utils import Crc64

                crc = Crc64()
                crc.update(body)
                extra["x-oss-hash-crc64ecma"] = str(crc.crc)
            except ImportError:
                pass
            return 200, {"Status": "OK"}, extra

        raise Reply(404, {"msgCode": "404", "msg": f"no route {method} {path}", "traceId": "x"})
