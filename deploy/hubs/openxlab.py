"""Push a local folder to an OpenXLab model repository with the ``openxlab`` client library (0.0.11).

What the pinned client offers, and what that means here (see MS_OXL_NOTES.md for file/line):

* No ``openxlab.login`` and no endpoint setting: the hosts are module constants.  The sign-in
  client is ``openxlab.xlab.handler.user_token.AUTH_CLIENT`` (its ``endpoint`` attribute is set for
  the call), the model-center client ``OpenapiClient`` takes its endpoint as an argument, and the
  object-storage host is ``openxlab.model.handler.upload_file.oss_endpoint`` (set for the call).
* Sign-in is AK/SK: ``POST .../auth {ak}`` gives a nonce, ``POST .../getJwt {ak, d}`` with
  ``d = base64(HMAC-SHA256(sk, nonce))`` gives a JWT. The SK itself is never sent.
* The client keeps the JWT in ``~/.openxlab/token.json`` (``openxlab.config.const.DEFAULT_CONFIG_DIR``,
  fixed at import time, so changing HOME later does not move it). For the call it is pointed at a
  fresh temporary directory, which is deleted afterwards: no token of this push stays on disk, and a
  token.json the user already has is neither read nor overwritten.
* Uploads go through ``upload_model_list``: every file is a "model" whose weight file it is; the
  model center hands out short-lived object-storage credentials and ``oss2`` PUTs the file.
  0.0.11 has no commit and no commit message, no sub-folders (weights are stored by file name) and
  cannot upload other files ("other way is designing", upload_file.py).
* ``openxlab.model`` imports ``oss2`` on import; without it the client cannot be loaded at all.

The module-level settings are process-wide, so pushes are serialised by a lock. Every failure comes
out as a :class:`PublishError` whose detail never contains the token (neither AK nor SK).
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path

from .base import PublishError, PushResult, root_cause

DEFAULT_ENDPOINT = "https://openapi.openxlab.org.cn"  # openxlab.model.common.constants.model_openapi_url_prefix_prod
DEFAULT_WEB = "https://openxlab.org.cn"
DEFAULT_OSS_ENDPOINT = "https://oss-cn-shanghai.aliyuncs.com"  # ...constants.oss_endpoint
AUTH_PATH = "/api/v1/sso-be/api/v1/open/"  # user_token.AUTH_CLIENT's path on the API host
API_PATH = "/api/v1"
_REPO_RE = re.compile(r"^[a-zA-Z0-9]+/[a-zA-Z0-9\-_]+$")  # the client's own _split_repo check
_LOCK = threading.Lock()
_QUOTA_STATUS = (413, 429, 507)
_GATEWAY_STATUS = (502, 503, 504)
_WORDS = (  # server messages -> kind (lower-case substrings), first match wins
    ("not_found", ("not found", "not exist", "no such", "不存在")),
    ("name_taken", ("already exist", "name exist", "exists", "taken", "已存在", "已被")),
    ("quota", ("quota", "insufficient storage", "storage limit", "space", "rate limit", "容量", "配额")),
    ("bad_token", ("token", "unauthor", "forbidden", "login", "jwt", " ak ", "signature", "登录")),
)


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_client():
    try:
        from openxlab.config import const
        from openxlab.model.clients.openapi_client import OpenapiClient
        from openxlab.model.handler import upload_file
        from openxlab.xlab.handler import user_token
    except ImportError as exc:  # openxlab 0.0.11 imports oss2 in openxlab/model/clients/oss_client.py
        raise PublishError("other", _one_line(f"the openxlab client cannot be loaded ({exc}); "
                                              "it needs the oss2 package")) from None
    return const, OpenapiClient, upload_file, user_token


class OpenXLabHub:
    name = "openxlab"

    def __init__(self, endpoint: str | None = None, *, oss_endpoint: str | None = None,
                 web_url: str | None = None):
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        custom = endpoint is not None and self.endpoint != DEFAULT_ENDPOINT
        # A non-default hub (a staging or local one) serves its object storage itself unless told.
        self.oss_endpoint = (oss_endpoint or (self.endpoint if custom else DEFAULT_OSS_ENDPOINT)).rstrip("/")
        self.web_url = (web_url or (self.endpoint if custom else DEFAULT_WEB)).rstrip("/")

    def push_folder(self, folder: Path, repo_id: str, *, token: str, private: bool = False,
                    repo_type: str = "model", commit_message: str = "Upload from tuner") -> PushResult:
        # commit_message: the 0.0.11 model center has no commits; it is accepted and not sent.
        folder = Path(folder)
        if not folder.is_dir():
            raise PublishError("other", f"not a folder: {folder}")
        ak, _, sk = (token or "").strip().partition(":")
        ak, sk = ak.strip(), sk.strip()
        if not ak or not sk:
            raise PublishError("bad_token", "the OpenXLab token must be 'AK:SK' (OPENXLAB_AK / OPENXLAB_SK)")
        if repo_type != "model":
            raise PublishError("other", f"OpenXLab pushes here are model repositories only, not {repo_type!r}")
        repo_id = repo_id.strip().strip("/")
        if not _REPO_RE.match(repo_id):
            raise PublishError("other", f"bad repository name {repo_id!r}: use 'username/name' "
                                        "(letters and digits, then letters, digits, '-', '_')")
        repository = repo_id.split("/")[1]
        files = self._local_files(folder)
        nested = [f.relative_to(folder).as_posix() for f in files if f.parent != folder]
        if nested:
            raise PublishError("other", _one_line(f"the OpenXLab client stores files by name only; "
                                                  f"sub-folders are not supported: {', '.join(nested)}"))
        if not files:
            raise PublishError("other", f"nothing to upload in {folder}")
        models = [{"Name": f.name, "Weights": f.resolve().as_posix(), "Results": []} for f in files]

        const, OpenapiClient, upload_file, user_token = _load_client()
        step = "signing in"
        with _LOCK, tempfile.TemporaryDirectory(prefix="openxlab-login-") as config_dir:
            saved = (const.DEFAULT_CONFIG_DIR, user_token.AUTH_CLIENT.endpoint, upload_file.oss_endpoint)
            try:
                # The client writes the JWT (and a refresh token) to <config dir>/token.json and reads
                # it back on every call; a throw-away directory keeps it off the user's ~/.openxlab
                # and off the disk once this push is over (TemporaryDirectory deletes it).
                const.DEFAULT_CONFIG_DIR = config_dir
                user_token.AUTH_CLIENT.endpoint = self.endpoint + AUTH_PATH
                upload_file.oss_endpoint = self.oss_endpoint
                user_token.get_token_via_api(ak, sk)
                client = OpenapiClient(self.endpoint + API_PATH, None)  # reads the JWT from config_dir

                step = "looking up the repository"
                remote = self._models_or_none(client, repository)
                if remote is None:
                    step = "creating the repository"
                    client.create_repository(repository, private, {
                        "Collections": [{"Name": repository, "License": self._license(folder),
                                         "Code": {"URL": ""}}],
                        "Models": models,
                    })
                    remote = client.query_models(repository)["models"]
                step = "uploading"
                upload_file.upload_model_list(client, repository, models, remote)
                step = "listing the repository"
                listed = client.query_models(repository)["models"]
            except Exception as exc:
                raise self._translate(exc, (token, ak, sk), step, repo_id) from None
            finally:
                const.DEFAULT_CONFIG_DIR, user_token.AUTH_CLIENT.endpoint, upload_file.oss_endpoint = saved

        names = {m.get("weightName") or m.get("name") for m in listed if isinstance(m, dict)}
        missing = sorted(f.name for f in files if f.name not in names)
        if missing:
            raise PublishError("other", _one_line(f"after the upload the hub lists no {', '.join(missing)}"))
        return PushResult(url=f"{self.web_url}/models/detail/{repo_id}", repo_id=repo_id, commit="",
                          files=sorted(f.name for f in files))

    # ----- internals ----------------------------------------------------------------------
    @staticmethod
    def _local_files(folder: Path) -> list[Path]:
        return [p for p in sorted(folder.rglob("*"))
                if p.is_file() and ".git" not in p.relative_to(folder).parts]

    @staticmethod
    def _license(folder: Path) -> str:
        """``license:`` from the README's front matter, else apache-2.0 (the create call needs one)."""
        try:
            text = (folder / "README.md").read_text(encoding="utf-8")
        except OSError:
            return "apache-2.0"
        match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
        found = re.search(r"(?m)^license:\s*['\"]?([^'\"\n]+)", match.group(1)) if match else None
        return found.group(1).strip() if found else "apache-2.0"

    @staticmethod
    def _models_or_none(client, repository: str):
        """The repository's models, or None when the hub says it has no such repository (for us)."""
        try:
            return client.query_models(repository)["models"]
        except ValueError as exc:
            if _kind_from_words(str(exc)) == "not_found":
                return None
            raise

    @staticmethod
    def _translate(exc: BaseException, secrets: tuple[str, ...], step: str, repo_id: str) -> PublishError:
        if isinstance(exc, PublishError):
            return exc
        import requests

        def scrub(text: str) -> str:
            for s in sorted(filter(None, secrets), key=len, reverse=True):
                text = text.replace(s, "***")
            return _one_line(text)

        where = f"{step} {repo_id}"
        try:
            import oss2.exceptions as oss_exc
        except ImportError:  # pragma: no cover - the client could not have run without it
            oss_exc = None

        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)) or (
                oss_exc is not None and isinstance(exc, oss_exc.RequestError)):
            root = root_cause(exc)
            return PublishError("network", scrub(f"{where}: the connection failed ({type(root).__name__}: {root})"))
        if isinstance(exc, requests.HTTPError):
            status = getattr(exc.response, "status_code", None)
            detail = scrub(f"{where}: HTTP {status}")
            if status in (401, 403):
                return PublishError("bad_token", detail)
            if status == 404:
                return PublishError("not_found", detail)
            if status in _QUOTA_STATUS:
                return PublishError("quota", detail)
            return PublishError("network" if status in _GATEWAY_STATUS else "other", detail)
        if oss_exc is not None and isinstance(exc, oss_exc.OssError):
            detail = scrub(f"{where}: object storage said {exc.status} {exc.code}: {exc.message}")
            code = (exc.code or "").lower()
            if "quota" in code or "storage" in code or exc.status in _QUOTA_STATUS:
                return PublishError("quota", detail)
            return PublishError("other", detail)
        if isinstance(exc, ValueError):
            # The client turns the hub's answers into ValueError("... error:<message>, traceId:...");
            # the sign-in ones quote the request (with the AK), so only the hub's words are kept.
            message = str(exc)
            said = re.search(r"error:\s*(.*?),\s*traceId", message)
            hub_msgs = [m for m in re.findall(r'"msg":\s*"([^"]*)"', message) if m.lower() != "success"]
            text = said.group(1) if said else (hub_msgs[-1] if hub_msgs else "refused")
            kind = "bad_token" if step == "signing in" else (_kind_from_words(message) or "other")
            return PublishError(kind, scrub(f"{where}: {text}" if text.strip() else f"{where}: refused"))
        return PublishError("other", scrub(f"{where}: {type(exc).__name__}: {exc}"))


def _kind_from_words(message: str) -> str | None:
    low = f" {message.lower()} "
    for kind, words in _WORDS:
        if any(w in low for w in words):
            return kind
    return None
