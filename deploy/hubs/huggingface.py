"""Push a local folder to a Hugging Face model repository or Space with ``huggingface_hub``.

Every failure comes out as a :class:`PublishError` with a short one-line detail; the token is
never put in any message (anything that looks like it is replaced by ``***``).
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import PublishError, PushResult

REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_QUOTA_STATUS = (413, 429, 507)
_QUOTA_WORDS = ("quota", "storage limit", "insufficient storage", "rate limit", "too many requests",
                "payload too large", "storage space", "exceeded")
_GATEWAY_STATUS = (502, 503, 504)
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    text = _BEARER.sub(r"\1***", text)
    return _TOKEN_LIKE.sub("***", text)


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a requests/urllib3 error chain (for a short network message)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = next((a for a in reversed(getattr(exc, "args", ())) if isinstance(a, BaseException)), None)
        if inner is None:
            reason = getattr(exc, "reason", None)
            inner = reason if isinstance(reason, BaseException) else (exc.__cause__ or exc.__context__)
        if inner is None:
            break
        exc = inner
    return exc


def _is_network_error(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    try:
        import urllib3.exceptions as u3

        if isinstance(exc, (u3.ProtocolError, u3.NewConnectionError, u3.MaxRetryError, u3.TimeoutError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import httpx  # later huggingface_hub versions use httpx

        if isinstance(exc, (httpx.TransportError,)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


# huggingface_hub 0.36 parses the ``commitUrl`` the hub answers with ``RepoUrl(...)`` without the
# ``HfApi`` endpoint (``CommitInfo.__post_init__``), i.e. against ``constants.ENDPOINT``: after a
# successful commit to any other endpoint (a mirror, a self-hosted hub, the tests' fake) it raises
# this, so the commit id is then read back from the repository instead.
_COMMIT_URL_PARSE_ERROR = "Unable to retrieve user and repo ID from the passed HF ID"


def _hub_url(endpoint: str, repo_type: str, repo_id: str) -> str:
    return f"{endpoint.rstrip('/')}/{_URL_PREFIX.get(repo_type, '')}{repo_id}"


class HuggingFaceHub:
    name = "hf"

    def __init__(self, endpoint: str | None = None):
        if endpoint is None:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
        self.endpoint = endpoint.rstrip("/")

    # ----- public -------------------------------------------------------------------------
    def whoami(self, token: str) -> dict:
        """The hub's account record for ``token`` (``name``, ``orgs``, ``auth`` ...)."""
        if not token:
            raise PublishError("bad_token", "no token given")
        api = self._api(token)
        try:
            return api.whoami(token=token)
        except Exception as exc:
            raise self._translate(exc, token, "checking the token", None) from None

    def push_folder(self, folder: Path, repo_id: str, *, token: str, private: bool = False,
                    repo_type: str = "model", commit_message: str = "Upload from tuner") -> PushResult:
        folder = Path(folder)
        if not folder.is_dir():
            raise PublishError("other", f"not a folder: {folder}")
        if not token:
            raise PublishError("bad_token", "no token given")
        if repo_type not in REPO_TYPES:
            raise PublishError("other", f"unknown repo type {repo_type!r}")
        repo_id = repo_id.strip().strip("/")
        if not repo_id or repo_id.count("/") > 1:
            raise PublishError("other", f"bad repository name {repo_id!r}: use 'name' or 'owner/name'")

        api = self._api(token)
        if "/" not in repo_id:
            repo_id = f"{self.whoami(token)['name']}/{repo_id}"
        files = self._local_files(folder)
        step = "creating the repository"
        try:
            try:
                api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                                space_sdk="gradio" if repo_type == "space" else None, token=token)
            except ValueError as exc:
                # create was refused (403) but the repository exists and is visible; the client then
                # builds its URL against ``constants.ENDPOINT`` (see above). Whether we may write to
                # it shows at the upload.
                if _COMMIT_URL_PARSE_ERROR not in str(exc):
                    raise
            step = "uploading"
            try:
                commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type,
                                           commit_message=commit_message, token=token).oid
            except ValueError as exc:
                if _COMMIT_URL_PARSE_ERROR not in str(exc):
                    raise
                step = "reading the new commit back"
                commit = api.repo_info(repo_id, repo_type=repo_type, token=token).sha
        except Exception as exc:
            # ``from None``: the client's own exception chain stays out of the traceback.
            raise self._translate(exc, token, step, repo_id) from None
        return PushResult(url=_hub_url(self.endpoint, repo_type, repo_id), repo_id=repo_id,
                          commit=commit or "", files=files)

    # ----- internals ----------------------------------------------------------------------
    def _api(self, token: str):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=token, library_name="tuner")

    @staticmethod
    def _local_files(folder: Path) -> list[str]:
        """The paths ``upload_folder`` sends: every file but those it ignores by default (.git ...)."""
        from huggingface_hub.utils import filter_repo_objects
        from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

        paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        return list(filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS))

    def _owns_namespace(self, token: str, namespace: str) -> bool | None:
        """True/False when the token's account is/is not ``namespace`` or one of its orgs; None if unknown."""
        try:
            me = self._api(token).whoami(token=token)
        except Exception:
            return None
        names = {me.get("name")} | {o.get("name") for o in me.get("orgs") or [] if isinstance(o, dict)}
        return namespace in names

    def _translate(self, exc: BaseException, token: str, step: str, repo_id: str | None) -> PublishError:
        if isinstance(exc, PublishError):
            return exc
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        if status is not None:
            server = getattr(exc, "server_message", None) or ""
            if not server:
                try:
                    body = response.json()
                    server = body.get("error") or "" if isinstance(body, dict) else ""
                except Exception:
                    server = ""
            server = _one_line(_scrub(str(server), token), 200)
            detail = f"HTTP {status} while {step}" + (f": {server}" if server else "")
            lowered = server.lower()
            if status in _QUOTA_STATUS or any(w in lowered for w in _QUOTA_WORDS):
                return PublishError("quota", detail)
            if status == 401:
                return PublishError("bad_token", detail)
            if status in (403, 404):
                # Refused or invisible: someone else's namespace means the name is taken; in our own
                # namespace a 403 means the token may not write, a 404 that the repo is not there.
                namespace = repo_id.split("/")[0] if repo_id and "/" in repo_id else None
                if namespace and self._owns_namespace(token, namespace) is False:
                    return PublishError("name_taken", f"{detail} ({namespace!r} is not your account or one of "
                                                      "your organisations)")
                if status == 404:
                    return PublishError("not_found", detail)
                return PublishError("bad_token", f"{detail} (does the token have write access?)")
            if status == 409 and step == "creating the repository":
                return PublishError("name_taken", detail)
            if status in _GATEWAY_STATUS:
                return PublishError("network", detail)
            return PublishError("other", detail)
        if _is_network_error(exc):
            root = _root_cause(exc)
            text = _one_line(_scrub(f"{type(root).__name__}: {root}", token), 200)
            return PublishError("network", f"while {step}: {text}")
        text = _one_line(_scrub(f"{type(exc).__name__}: {exc}", token), 240)
        if any(w in text.lower() for w in _QUOTA_WORDS):
            return PublishError("quota", f"while {step}: {text}")
        return PublishError("other", f"while {step}: {text}")


def whoami(token: str, endpoint: str | None = None) -> dict:
    """The account behind ``token`` on the hub at ``endpoint`` (default: the client's)."""
    return HuggingFaceHub(endpoint).whoami(token)
