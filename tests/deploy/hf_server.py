"""A small in-memory stand-in for the Hugging Face Hub HTTP API, for tests.

It speaks the part of the API that ``huggingface_hub`` 0.36 uses to create a repository,
upload a folder (preupload -> LFS batch -> PUT -> verify -> ndjson commit) and download it
again (repo info with siblings, tree listing, HEAD/GET on ``/resolve/``). It never offers the
Xet transfer, so the client always falls back to plain LFS or regular (base64) uploads.

Failure switches (all on the ``HubServer`` object):

* only tokens registered with ``add_user`` are valid; any other ``Authorization`` -> 401;
  a user with ``role="read"`` gets 403 on every write;
* ``add_repo("bob/x", ...)`` makes a repository owned by someone else; creating a repository in
  a namespace the caller does not belong to answers ``foreign_create_status`` (403 like the
  Hub, or 409), and every write to it answers 403;
* ``quota_status = 507`` (or 413, 429): every write after repository creation is refused;
* ``drop_next(n, path_contains=None)``: the next ``n`` matching requests get no response at
  all, the socket is just closed;
* ``fail(path_contains, status, message)``: answer ``status`` with ``message`` once; the text
  ``{auth}`` in ``message`` is replaced by the request's ``Authorization`` header (to test that
  clients scrub echoed secrets).
* ``hardware_refusal = (status, message)``: ``POST /api/spaces/{id}/hardware`` is refused (a free
  account asking for paid hardware); otherwise the requested flavor is kept in ``Repo.hardware``.

Everything is recorded in ``requests`` (method, path, headers, body, dropped) and in ``repos``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import serve, shut
from urllib.parse import parse_qs, quote, unquote, urlsplit

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".zip",
                ".tar", ".gz", ".npy", ".npz", ".pkl", ".msgpack", ".model", ".parquet", ".arrow")
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class StoredFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return git_blob_sha1(self.data)

    @property
    def oid(self) -> str:
        """What the Hub reports as this file's oid in preupload (sha256 for LFS, git sha1 else)."""
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class Commit:
    oid: str
    message: str
    description: str
    author: str
    files: list[StoredFile]  # what this commit added or changed (vs. its parent)
    deleted: list[str]
    tree: dict[str, StoredFile]  # full snapshot after the commit
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    owner: str
    private: bool = False
    sdk: str | None = None
    hardware: str | None = None  # the flavor last requested for a Space
    commits: list[Commit] = field(default_factory=list)
    created_at: str = field(default_factory=_now)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    @property
    def files(self) -> dict[str, StoredFile]:
        return self.head.tree


@dataclass
class User:
    name: str
    token: str
    orgs: tuple[str, ...] = ()
    role: str = "write"


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    dropped: bool = False

    def header(self, name: str, default: str = "") -> str:
        """A request header, whatever the case the client wrote its name in."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), default)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None,
                 header_message: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.extra = extra or {}
        self.header_message = header_message


class HubServer:
    def __init__(self):
        self.users: dict[str, User] = {}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[Logged] = []
        self.quota_status: int | None = None
        self.foreign_create_status = 403
        self.hardware_refusal: tuple[int, str] | None = None
        self._drops: list[list] = []  # [remaining, path_contains]
        self._fails: list[list] = []  # [path_contains, status, message]
        self._lock = threading.RLock()
        self._upload_secret = secrets.token_hex(8)
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- set-up -------------------------------------------------------------------------
    def add_user(self, name: str, token: str, orgs=(), role: str = "write") -> User:
        user = User(name, token, tuple(orgs), role)
        self.users[token] = user
        return user

    def add_repo(self, repo_id: str, owner: str | None = None, *, repo_type: str = "model",
                 private: bool = False, sdk: str | None = None, files: dict[str, bytes] | None = None) -> Repo:
        with self._lock:
            repo = self._create(repo_id, repo_type, owner or repo_id.split("/")[0], private, sdk)
            if files:
                tree = dict(repo.head.tree)
                added = [StoredFile(p, d, self._is_lfs(p, d)) for p, d in files.items()]
                tree.update({f.path: f for f in added})
                repo.commits.append(Commit(self._new_oid(), "Add files", "", repo.owner, added, [], tree))
            return repo

    def drop_next(self, count: int = 1, path_contains: str | None = None) -> None:
        with self._lock:
            self._drops.append([count, path_contains])

    def fail(self, path_contains: str, status: int, message: str) -> None:
        with self._lock:
            self._fails.append([path_contains, status, message])

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # ----- life cycle ---------------------------------------------------------------------
    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd, self._thread = serve(handler)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            shut(self._httpd, self._thread)
            self._httpd = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ----- internals ----------------------------------------------------------------------
    def _new_oid(self) -> str:
        self._counter += 1
        return hashlib.sha1(f"{self._upload_secret}-{self._counter}".encode()).hexdigest()

    @staticmethod
    def _is_lfs(path: str, data_or_sample: bytes, size: int | None = None) -> bool:
        size = len(data_or_sample) if size is None else size
        return path.endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD or b"\0" in data_or_sample[:512]

    def _create(self, repo_id, repo_type, owner, private, sdk) -> Repo:
        repo = Repo(repo_id, repo_type, owner, private, sdk)
        ga = StoredFile(".gitattributes", GITATTRIBUTES, False)
        repo.commits.append(Commit(self._new_oid(), "initial commit", "", owner, [ga], [], {ga.path: ga}))
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _take_drop(self, path: str) -> bool:
        with self._lock:
            for rule in self._drops:
                if rule[0] > 0 and (rule[1] is None or rule[1] in path):
                    rule[0] -= 1
                    return True
        return False

    def _take_fail(self, path: str):
        with self._lock:
            for rule in self._fails:
                if rule[0] in path:
                    self._fails.remove(rule)
                    return rule[1], rule[2]
        return None


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/0.1"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    # ----- plumbing -----------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict | None = None, head_only: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", secrets.token_hex(6))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        body = self._read_body() if method in ("POST", "PUT", "DELETE", "PATCH") else b""
        dropped = hub._take_drop(self.path)
        with hub._lock:
            hub.requests.append(Logged(method, self.path, dict(self.headers.items()), body, dropped))
        if dropped:
            self.close_connection = True
            return
        failure = hub._take_fail(self.path)
        if failure is not None:
            status, message = failure
            message = message.replace("{auth}", self.headers.get("Authorization", ""))
            self._json(status, {"error": message})
            return
        try:
            self._route(method, body)
        except _HTTPError as e:
            headers = {}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.header_message:
                headers["X-Error-Message"] = e.header_message
            self._json(e.status, {"error": e.message, **e.extra}, headers=headers)
        except Exception as e:  # a bug in the fake: answer 500 rather than hang the client
            self._json(500, {"error": f"fake hub crashed: {type(e).__name__}: {e}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ----- auth ---------------------------------------------------------------------------
    def _user(self, required: bool) -> User | None:
        auth = self.headers.get("Authorization")
        if not auth:
            if required:
                raise _HTTPError(401, "Invalid username or password.")
            return None
        token = auth[7:] if auth.lower().startswith("bearer ") else auth
        user = self.hub.users.get(token)
        if user is None:
            raise _HTTPError(401, "Invalid credentials in Authorization header",
                             header_message="Invalid credentials in Authorization header")
        return user

    def _can_write(self, user: User, namespace: str) -> bool:
        return user.role == "write" and (namespace == user.name or namespace in user.orgs)

    def _repo_for_read(self, repo_type: str, repo_id: str) -> Repo:
        user = self._user(required=False)
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and (user is None or not (
                repo.owner == user.name or repo.owner in user.orgs))):
            raise _HTTPError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str, quota: bool = True) -> tuple[Repo, User]:
        user = self._user(required=True)
        repo = self._repo_for_read(repo_type, repo_id)
        if not self._can_write(user, repo.owner):
            raise _HTTPError(403, f"You don't have write access to {repo_id}: it belongs to {repo.owner}.")
        if quota and self.hub.quota_status:
            status = self.hub.quota_status
            message = {413: "Payload too large: storage quota exceeded for this account.",
                       429: "Too many requests: rate limit exceeded, retry later.",
                       }.get(status, "Insufficient storage: storage quota exceeded for this account.")
            raise _HTTPError(status, message)
        return repo, user

    # ----- routing ------------------------------------------------------------------------
    def _route(self, method: str, body: bytes) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        m = None
        if method == "GET" and path == "/api/whoami-v2":
            return self._whoami()
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if method == "DELETE" and path == "/api/repos/delete":
            return self._delete_repo(json.loads(body or b"{}"))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body or b"{}"))
        if method == "PUT" and (m := re.fullmatch(r"/__lfs/upload/(\w+)/([0-9a-f]{64})", path)):
            return self._lfs_put(m.group(1), m.group(2), body)
        if method == "POST" and (m := re.fullmatch(r"/__lfs/verify/(models|datasets|spaces)/([^/]+/[^/]+)", path)):
            repo, _ = self._repo_for_write(TYPES[m.group(1)], m.group(2), quota=False)
            obj = json.loads(body or b"{}")
            data = self.hub.lfs_store.get(obj.get("oid", ""))
            if data is None or len(data) != obj.get("size"):
                raise _HTTPError(404, "Object not found in LFS storage")
            return self._json(200, {"success": True})
        if m := re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path):
            repo_type, repo_id, rest = TYPES[m.group(1)], m.group(2), m.group(3) or ""
            return self._api_repo(method, repo_type, repo_id, rest, body, query)
        if method == "POST" and (m := re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch",
                                                   path)):
            return self._lfs_batch(TYPES.get(m.group(1) or "models"), m.group(2), json.loads(body or b"{}"))
        if method in ("GET", "HEAD") and (m := re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)",
                                                            path)):
            return self._resolve(method, TYPES.get(m.group(1) or "models"), m.group(2), m.group(3), m.group(4))
        raise _HTTPError(404, f"No route for {method} {path}")

    def _api_repo(self, method, repo_type, repo_id, rest, body, query) -> None:
        if method == "GET" and (rest == "" or rest.startswith("revision/")):
            revision = rest[len("revision/"):] if rest else "main"
            return self._repo_info(repo_type, repo_id, revision, query)
        if method == "GET" and rest.startswith("tree/"):
            revision, _, sub = rest[len("tree/"):].partition("/")
            return self._tree(repo_type, repo_id, revision, sub, query)
        if method == "POST" and rest.startswith("preupload/"):
            return self._preupload(repo_type, repo_id, rest[len("preupload/"):], json.loads(body or b"{}"))
        if method == "POST" and rest.startswith("commit/"):
            return self._commit(repo_type, repo_id, rest[len("commit/"):], body)
        if method == "POST" and rest == "hardware" and repo_type == "space":
            return self._request_hardware(repo_id, json.loads(body or b"{}"))
        raise _HTTPError(404, f"No route for {method} /api/.../{rest}")

    # ----- endpoints ----------------------------------------------------------------------
    def _whoami(self) -> None:
        user = self._user(required=True)
        self._json(200, {
            "type": "user", "id": hashlib.md5(user.name.encode()).hexdigest()[:24], "name": user.name,
            "fullname": user.name.title(), "email": f"{user.name}@example.invalid", "emailVerified": True,
            "avatarUrl": f"/avatars/{user.name}.svg",
            "isPro": False, "orgs": [{"type": "org", "name": o, "roleInOrg": "write"} for o in user.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": user.role}},
        })

    def _create_repo(self, req: dict) -> None:
        user = self._user(required=True)
        repo_type = req.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise _HTTPError(400, f"Invalid repo type {repo_type!r}")
        namespace = req.get("organization") or user.name
        name = req.get("name") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            raise _HTTPError(400, "Repo name must use alphanumeric chars, '-', '_' or '.'")
        repo_id = f"{namespace}/{name}"
        url = f"{self._base()}/{URL_PREFIX[repo_type]}{repo_id}"
        if repo_type == "space" and not req.get("sdk"):
            raise _HTTPError(400, "sdk is required for spaces")
        with self.hub._lock:
            existing = self.hub.repos.get((repo_type, repo_id))
            if not self._can_write(user, namespace):
                status = self.hub.foreign_create_status
                if status == 409:
                    raise _HTTPError(409, f"Repository {repo_id} already exists and belongs to {namespace}.",
                                     extra={"url": url})
                raise _HTTPError(status, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
            if existing is not None:
                raise _HTTPError(409, f"You already created this {repo_type} repo", extra={"url": url})
            repo = self.hub._create(repo_id, repo_type, namespace, bool(req.get("private", False)),
                                    req.get("sdk") if repo_type == "space" else None)
        self._json(200, {"url": url, "name": repo_id, "id": repo.head.oid[:24]})

    def _request_hardware(self, repo_id: str, req: dict) -> None:
        repo, _ = self._repo_for_write("space", repo_id, quota=False)
        if self.hub.hardware_refusal:
            raise _HTTPError(*self.hub.hardware_refusal)
        repo.hardware = req.get("flavor")
        self._json(200, {"stage": "BUILDING", "hardware": {"current": None, "requested": repo.hardware},
                         "gcTimeout": req.get("sleepTimeSeconds")})

    def _delete_repo(self, req: dict) -> None:
        user = self._user(required=True)
        repo_type = req.get("type") or "model"
        repo_id = f"{req.get('organization') or user.name}/{req.get('name')}"
        repo, _ = self._repo_for_write(repo_type, repo_id, quota=False)
        with self.hub._lock:
            del self.hub.repos[(repo_type, repo_id)]
        self._json(200, {})

    def _validate_yaml(self, req: dict) -> None:
        self._user(required=False)
        content = req.get("content", "")
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end == -1:
                return self._json(400, {"errors": [{"message": "YAML front matter is not closed"}], "warnings": []})
            try:
                import yaml

                meta = yaml.safe_load(content[3:end])
                if meta is not None and not isinstance(meta, dict):
                    raise ValueError("metadata must be a mapping")
            except Exception as e:
                return self._json(400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _base(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        if revision in ("main", "HEAD"):
            return repo.head
        for c in repo.commits:
            if c.oid == revision or (len(revision) >= 7 and c.oid.startswith(revision)):
                return c
        raise _HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def _repo_info(self, repo_type, repo_id, revision, query) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in sorted(commit.tree.values(), key=lambda f: f.path):
            s = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.git_sha1)
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(s)
        info = {"_id": repo.head.oid[:24], "id": repo.repo_id, "author": repo.owner, "sha": commit.oid,
                "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
                "gated": False, "disabled": False, "likes": 0, "tags": [], "siblings": siblings}
        if repo_type == "model":
            info.update(downloads=0, library_name=None)
        if repo_type == "space":
            info.update(sdk=repo.sdk, runtime={"stage": "BUILDING", "hardware": {"current": None, "requested": None}})
        self._json(200, info)

    def _tree(self, repo_type, repo_id, revision, sub, query) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        entries, folders = [], set()
        for f in sorted(commit.tree.values(), key=lambda f: f.path):
            if not f.path.startswith(prefix):
                continue
            rel = f.path[len(prefix):]
            dirs = rel.split("/")[:-1]
            for i in range(len(dirs)):
                folder = prefix + "/".join(dirs[: i + 1])
                if (recursive or i == 0) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                    "size": 0, "path": folder})
            if recursive or not dirs:
                e = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": f.path}
                if f.lfs:
                    e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries.append(e)
        if prefix and not entries:
            raise _HTTPError(404, f"{sub} does not exist", code="EntryNotFound")
        self._json(200, entries)

    def _preupload(self, repo_type, repo_id, revision, req: dict) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        tree = self._commit_at(repo, revision).tree
        files = []
        for f in req.get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            existing = tree.get(f["path"])
            files.append({"path": f["path"],
                          "uploadMode": "lfs" if self.hub._is_lfs(f["path"], sample, f.get("size", 0)) else "regular",
                          "shouldIgnore": False,
                          "oid": existing.oid if existing else None})
        self._json(200, {"files": files, "commitOid": repo.head.oid})

    def _lfs_batch(self, repo_type, repo_id, req: dict) -> None:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        if req.get("operation") != "upload":
            raise _HTTPError(400, "only the upload operation is supported")
        base, type_path = self._base(), {v: k for k, v in TYPES.items()}[repo_type]
        objects = []
        for obj in req.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            out = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_store:
                out["actions"] = {
                    "upload": {"href": f"{base}/__lfs/upload/{self.hub._upload_secret}/{oid}", "header": {}},
                    "verify": {"href": f"{base}/__lfs/verify/{type_path}/{repo_id}", "header": {}},
                }
            objects.append(out)
        # "basic" only: never "xet", whatever the client offers.
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, secret: str, oid: str, body: bytes) -> None:
        if secret != self.hub._upload_secret:
            raise _HTTPError(403, "Signature does not match")
        if self.hub.quota_status:
            raise _HTTPError(self.hub.quota_status, "Insufficient storage: storage quota exceeded.")
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HTTPError(400, "Uploaded content does not match its oid")
        with self.hub._lock:
            self.hub.lfs_store[oid] = body
        self._send(200, b"", headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _commit(self, repo_type, repo_id, revision, body: bytes) -> None:
        repo, user = self._repo_for_write(repo_type, repo_id)
        if unquote(revision) != "main":
            raise _HTTPError(400, "the fake hub only commits to main")
        header, added, deleted = {}, [], []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _HTTPError(400, "only base64 file content is supported")
                data = base64.b64decode(value["content"])
                added.append(StoredFile(value["path"], data, False))
            elif key == "lfsFile":
                data = self.hub.lfs_store.get(value["oid"])
                if data is None:
                    raise _HTTPError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                added.append(StoredFile(value["path"], data, True))
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise _HTTPError(400, f"unknown commit operation {key!r}")
        if not header.get("summary"):
            raise _HTTPError(400, "commit summary is required")
        with self.hub._lock:
            parent = header.get("parentCommit")
            if parent and parent != repo.head.oid:
                raise _HTTPError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.head.tree)
            for p in deleted:
                for k in [k for k in tree if k == p or k.startswith(p.rstrip("/") + "/")]:
                    del tree[k]
            # Like git: a commit records only what differs from its parent (the client sends
            # every file of the folder once anything changed).
            changed = [f for f in added if f.path not in tree or tree[f.path].data != f.data]
            tree.update({f.path: f for f in added})
            commit = Commit(self.hub._new_oid(), header["summary"], header.get("description", ""), user.name,
                            changed, deleted, tree)
            repo.commits.append(commit)
        url = f"{self._base()}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
        self._json(200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _resolve(self, method, repo_type, repo_id, revision, path) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        f = commit.tree.get(path)
        if f is None:
            raise _HTTPError(404, "Entry not found", code="EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{f.oid}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        data, status = f.data, 200
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else f.size - 1
            data, status = f.data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{min(end, f.size - 1)}/{f.size}"
        self._send(status, data, content_type="application/octet-stream", headers=headers,
                   head_only=(method == "HEAD"))
