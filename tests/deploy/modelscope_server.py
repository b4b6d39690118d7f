"""A fake ModelScope hub on 127.0.0.1: the part of its HTTP API that ``modelscope`` 1.40
(``modelscope_hub`` 0.5) uses to push a folder.

Endpoints (``{id}`` is ``owner/name``):

* ``GET  /openapi/v1/users/me``                                   whoami (only for a repo id without owner)
* ``POST /api/v1/models``                                         create a model repository
* ``POST /api/v1/repos/models/{id}/info/lfs/objects/batch``       git-lfs batch: which blobs to send, and where
* ``PUT  /lfs-upload/{sha256}?sig=...``                           the "pre-signed" blob upload URL handed out above
* ``POST /api/v1/repos/models/{id}/commit/{revision}``           one commit: inline (base64) and LFS actions
* ``GET  /api/v1/models/{id}/repo/files``                         file listing

Error bodies follow what the client library decodes (``modelscope_hub/errors.py``): a bad token gets
HTTP 401 with business code 10010103009, an existing repository HTTP 400 with 10010101001, a namespace
of another account HTTP 403, a full quota HTTP 403 with ``code: QuotaLimitExceed``.

Switches: ``bad_token`` (every token refused), ``quota_at`` ("create" / "lfs" / "commit"),
``drop_next`` (number of coming requests whose connection is closed without an answer).
Everything that arrives is kept in ``requests`` (method, path, headers, body bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import serve, shut
from urllib.parse import parse_qs, unquote, urlsplit


# ----------------------------------------------------------------------------------------------
# A small recording HTTP server, shared with openxlab_server.py
# ----------------------------------------------------------------------------------------------
@dataclass
class Recorded:
    method: str
    path: str  # without the query
    query: dict
    headers: dict  # as sent (names keep their case)
    body: bytes


class Reply(Exception):
    """Raise inside a route to answer with this status and JSON (or bytes) body."""

    def __init__(self, status: int, body=None, headers: dict | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class RecordingServer:
    """ThreadingHTTPServer on 127.0.0.1:<random port> that records every request and routes it to
    ``self.route(method, path, query, headers, body)`` returning ``(status, body[, headers])``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.drop_next = 0  # close the connection of the next N requests without answering
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "RecordingServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._body()
                parts = urlsplit(self.path)
                rec = Recorded(self.command, unquote(parts.path), parse_qs(parts.query),
                               {k: v for k, v in self.headers.items()}, body)
                with server._lock:
                    server.requests.append(rec)
                    drop = server.drop_next > 0
                    if drop:
                        server.drop_next -= 1
                if drop:  # no status line, no headers: the client sees the connection closed
                    self.close_connection = True
                    return
                try:
                    # self.headers: case-insensitive .get(), as header names arrive in any case
                    result = server.route(rec.method, rec.path, rec.query, self.headers, body)
                except Reply as r:
                    result = (r.status, r.body, r.headers)
                status, payload, *extra = result
                headers = dict(extra[0]) if extra else {}
                if isinstance(payload, (dict, list)):
                    data = json.dumps(payload).encode()
                    headers.setdefault("Content-Type", "application/json")
                else:
                    data = payload or b""
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

        self._httpd, self._thread = serve(Handler)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            shut(self._httpd, self._thread)
            self._httpd = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def route(self, method, path, query, headers, body):  # pragma: no cover - overridden
        raise Reply(404, {"message": "no route"})

    # helpers for tests
    def bodies(self) -> list[bytes]:
        return [r.body for r in self.requests]

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]


# ----------------------------------------------------------------------------------------------
# The ModelScope part
# ----------------------------------------------------------------------------------------------
@dataclass
class Repo:
    owner: str
    name: str
    visibility: int
    license: str = ""
    created_by: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # {"id", "message", "author", "paths"}


def _legacy_error(status: int, code, message: str) -> Reply:
    return Reply(status, {"Code": code, "Message": message, "RequestId": secrets.token_hex(8),
                          "Success": False})


class ModelScopeServer(RecordingServer):
    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, tuple[str, tuple[str, ...]]] = {}  # token -> (username, orgs)
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes
        self.bad_token = False
        self.quota_at: str | None = None  # "create", "lfs" or "commit"

    def add_user(self, username: str, token: str, orgs: tuple[str, ...] = ()) -> None:
        self.users[token] = (username, tuple(orgs))

    def add_repo(self, repo_id: str, created_by: str, files: dict[str, bytes] | None = None,
                 visibility: int = 5) -> Repo:
        owner, name = repo_id.split("/")
        repo = Repo(owner, name, visibility, created_by=created_by, files=dict(files or {}))
        self.repos[repo_id] = repo
        return repo

    # auth: Bearer header or the m_session_id cookie, as the client sends both
    def _user(self, headers) -> tuple[str, tuple[str, ...]]:
        token = None
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if not token:
            for part in (headers.get("Cookie") or "").split(";"):
                k, _, v = part.strip().partition("=")
                if k == "m_session_id":
                    token = v
        if self.bad_token or token not in self.users:
            raise _legacy_error(401, 10010103009, "AccessToken is invalid or expired")
        return self.users[token]

    def _writable(self, user, owner: str) -> None:
        username, orgs = user
        if owner != username and owner not in orgs:
            raise _legacy_error(403, 10010101003, f"no permission to write under namespace {owner}")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _legacy_error(404, 10010101004, f"model {repo_id} does not exist")
        return repo

    def _quota(self, stage: str) -> None:
        if self.quota_at == stage:
            raise Reply(403, {"code": "QuotaLimitExceed", "message": "storage quota exceeded for this account",
                              "request_id": secrets.token_hex(8), "success": False})

    def route(self, method, path, query, headers, body):
        ok = lambda data: (200, {"Code": 200, "Data": data, "Message": "success",  # noqa: E731
                                 "RequestId": secrets.token_hex(8), "Success": True})
        parts = path.strip("/").split("/")

        if method == "GET" and path == "/openapi/v1/users/me":
            username, _ = self._user(headers)
            return 200, {"success": True, "data": {"username": username, "email": f"{username}@example.com"}}

        if method == "POST" and path == "/api/v1/models":
            user = self._user(headers)
            req = json.loads(body or b"{}")
            owner, name = req.get("Path", ""), req.get("Name", "")
            self._writable(user, owner)
            self._quota("create")
            repo_id = f"{owner}/{name}"
            if repo_id in self.repos:
                raise _legacy_error(400, 10010101001, "该名称已被注册使用，请重新命名")
            self.repos[repo_id] = Repo(owner, name, int(req.get("Visibility", 5)), req.get("License", ""),
                                       created_by=user[0])
            return ok({"Path": owner, "Name": name, "Visibility": int(req.get("Visibility", 5))})

        # /api/v1/repos/models/{owner}/{name}/info/lfs/objects/batch
        if method == "POST" and parts[:3] == ["api", "v1", "repos"] and parts[3] == "models" and \
                parts[6:] == ["info", "lfs", "objects", "batch"]:
            user = self._user(headers)
            repo_id = f"{parts[4]}/{parts[5]}"
            self._writable(user, parts[4])
            self._repo(repo_id)
            self._quota("lfs")
            req = json.loads(body or b"{}")
            objects = []
            for obj in req.get("objects", []):
                item = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self.blobs:
                    item["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}?sig={secrets.token_hex(8)}",
                                                  "expires_in": 3600}}
                objects.append(item)
            return ok({"transfer": "basic", "objects": objects})

        if method == "PUT" and parts[0] == "lfs-upload" and len(parts) == 2:
            oid = parts[1]
            if "sig" not in query:
                raise Reply(403, b"signature missing")
            if hashlib.sha256(body).hexdigest() != oid:
                raise Reply(400, b"content does not match its sha256")
            self.blobs[oid] = body
            return 200, b""

        # /api/v1/repos/models/{owner}/{name}/commit/{revision}
        if method == "POST" and parts[:4] == ["api", "v1", "repos", "models"] and len(parts) == 8 and \
                parts[6] == "commit":
            user = self._user(headers)
            repo_id = f"{parts[4]}/{parts[5]}"
            self._writable(user, parts[4])
            repo = self._repo(repo_id)
            self._quota("commit")
            req = json.loads(body or b"{}")
            new_files = {}
            for action in req.get("actions", []):
                if action.get("action") not in ("create", "update"):
                    raise _legacy_error(400, 10030000002, f"unsupported action {action.get('action')}")
                if action.get("type") == "lfs":
                    data = self.blobs.get(action.get("sha256", ""))
                    if data is None or len(data) != action.get("size"):
                        raise _legacy_error(400, 10030000003, f"lfs object of {action['path']} not uploaded")
                else:
                    data = base64.b64decode(action.get("content", ""))
                new_files[action["path"]] = data
            repo.files.update(new_files)
            commit_id = hashlib.sha1(json.dumps(sorted(repo.files)).encode() + secrets.token_bytes(4)).hexdigest()
            repo.commits.append({"id": commit_id, "message": req.get("commit_message", ""),
                                 "author": user[0], "paths": sorted(new_files), "revision": parts[7]})
            return ok({"CommitId": commit_id, "CommitMessage": req.get("commit_message", "")})

        # /api/v1/models/{owner}/{name}/repo/files
        if method == "GET" and parts[:3] == ["api", "v1", "models"] and parts[5:] == ["repo", "files"]:
            user = self._user(headers)
            repo = self._repo(f"{parts[3]}/{parts[4]}")
            if repo.visibility == 1:
                self._writable(user, repo.owner)
            files = [{"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob", "Size": len(d),
                      "Sha256": hashlib.sha256(d).hexdigest()} for p, d in sorted(repo.files.items())]
            return ok({"Files": files})

        raise Reply(404, {"Code": 404, "Message": f"no route {method} {path}", "Success": False})
