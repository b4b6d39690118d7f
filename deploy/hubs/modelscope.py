"""Push a local folder to a ModelScope model repository with the ``modelscope`` client library.

The client is ``modelscope.hub.api.HubApi`` (modelscope 1.40, a shim over ``modelscope_hub``). It
uploads over HTTP, never through ``git``: ``create_repo`` (``POST /api/v1/models``), then
``upload_folder`` which asks the LFS batch endpoint for upload URLs, PUTs the large files there and
commits everything in one ``POST /api/v1/repos/models/{id}/commit/master`` (small files travel
inline, base64). The result is checked with ``GET /api/v1/models/{id}/repo/files``.

The token is handed to ``HubApi(token=...)`` and goes out only in request headers
(``Authorization: Bearer`` and the ``m_session_id`` cookie). ``HubApi.login`` is deliberately not
called: it posts the token in a JSON body (``{"AccessToken": ...}``) and writes session cookies
and a git token under ``~/.modelscope/credentials``. Nothing of the token is written to disk here.

Every failure comes out as a :class:`PublishError` with a short, one-line detail that never
contains the token.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import PublishError, PushResult, root_cause

DEFAULT_ENDPOINT = "https://modelscope.cn"
VISIBILITY_PUBLIC = 5  # modelscope_hub.constants.Visibility.PUBLIC
VISIBILITY_PRIVATE = 1  # modelscope_hub.constants.Visibility.PRIVATE
_BEARER = re.compile(r"(?i)(bearer\s+|m_session_id=)[^\s;,'\"]+")
_GATEWAY_STATUS = (502, 503, 504)
# What upload_folder leaves out anyway (modelscope_hub.constants.DEFAULT_IGNORE_PATTERNS, in short).
_SKIPPED_PARTS = (".git", ".cache")


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return _BEARER.sub(r"\1***", text)


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The endpoint the client library would use: argument, else ``MODELSCOPE_ENDPOINT``, else
    ``MODELSCOPE_DOMAIN`` (a bare domain gets ``https://``), else ``https://modelscope.cn``.

    Read at call time through ``modelscope_hub.config.HubConfig`` (a fresh one: the library's
    process-wide default config is built once and would not see a later change of the environment).
    """
    import warnings

    from modelscope_hub.config import HubConfig

    if endpoint:
        return HubConfig.normalize_endpoint(endpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "MODELSCOPE_DOMAIN is deprecated"
        return HubConfig(token="").endpoint or DEFAULT_ENDPOINT


class _ErrorLog:
    """Keeps the exceptions the client's upload calls raised.

    ``upload_folder`` catches per-file and per-commit failures and, at the end, raises one generic
    ``StorageError("N file(s) failed to upload")``; the original error (a refused token, a full
    quota) would be lost. Wrapping the three transport methods of *this* client instance (not the
    class) keeps them so the failure can be reported as what it was.
    """

    def __init__(self, legacy_client) -> None:
        self.errors: list[BaseException] = []
        for name in ("validate_blobs", "upload_blob", "create_commit"):
            original = getattr(legacy_client, name, None)
            if original is not None:
                setattr(legacy_client, name, self._wrap(original))

    def _wrap(self, fn):
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                self.errors.append(exc)
                raise

        return wrapper

    def most_telling(self) -> BaseException | None:
        """The first error that is not a plain network error, else the first one."""
        from modelscope_hub.errors import NetworkError

        for exc in self.errors:
            if not isinstance(exc, (NetworkError, ConnectionError)):
                return exc
        return self.errors[0] if self.errors else None


class ModelScopeHub:
    name = "modelscope"

    def __init__(self, endpoint: str | None = None, *, max_retries: int | None = None):
        # None: resolved on each push like the client library does (MODELSCOPE_ENDPOINT /
        # MODELSCOPE_DOMAIN / https://modelscope.cn), see resolve_endpoint().
        self.endpoint = endpoint
        # Transport retries of the client's API session (None: the library's default, 5 with
        # back-off, which is about 15 s before an unreachable host is reported).
        self.max_retries = max_retries

    # ----- public -------------------------------------------------------------------------
    def push_folder(self, folder: Path, repo_id: str, *, token: str, private: bool = False,
                    repo_type: str = "model", commit_message: str = "Upload from tuner") -> PushResult:
        folder = Path(folder)
        if not folder.is_dir():
            raise PublishError("other", f"not a folder: {folder}")
        if not token or not token.strip():
            raise PublishError("bad_token", "no token given")
        token = token.strip()
        if repo_type != "model":
            raise PublishError("other", f"ModelScope pushes here are model repositories only, not {repo_type!r}")
        repo_id = repo_id.strip().strip("/")
        if not repo_id or repo_id.count("/") > 1:
            raise PublishError("other", f"bad repository name {repo_id!r}: use 'name' or 'owner/name'")
        files = self._local_files(folder)
        if not files:
            raise PublishError("other", f"nothing to upload in {folder}")

        endpoint = resolve_endpoint(self.endpoint)
        api = self._api(endpoint, token, self.max_retries)
        step = "looking up the account of the token for"
        log = None
        try:
            if "/" not in repo_id:
                user = api.whoami()
                if not getattr(user, "username", ""):
                    raise PublishError("bad_token", "the hub did not say whose token this is")
                repo_id = f"{user.username}/{repo_id}"
            step = "creating the repository"
            self._create_repo(api, repo_id, private)
            step = "uploading"
            log = _ErrorLog(api.legacy)
            info = api.upload_folder(
                repo_id, folder_path=str(folder), repo_type="model",
                commit_message=commit_message, use_cache=False,  # no .ms_upload_cache in the folder
                disable_tqdm=True, max_workers=4,
            )
            step = "listing the repository"
            listed = [f.path for f in api.list_repo_files(repo_id, "model") if getattr(f, "type", "blob") != "tree"]
        except Exception as exc:
            cause = (log.most_telling() if log is not None else None) or exc
            raise self._translate(cause, token, step, repo_id) from None
        missing = sorted(set(files) - set(listed))
        if missing:
            raise PublishError("other", _one_line(f"after the upload the hub lists no {', '.join(missing)}"))
        return PushResult(url=f"{endpoint}/models/{repo_id}", repo_id=repo_id,
                          commit=self._commit_id(info), files=sorted(listed))

    # ----- internals ----------------------------------------------------------------------
    @staticmethod
    def _api(endpoint: str, token: str, max_retries: int | None = None):
        from modelscope.hub.api import HubApi

        if max_retries is None:
            return HubApi(endpoint=endpoint, token=token)
        return HubApi(endpoint=endpoint, token=token, max_retries=max_retries)

    @staticmethod
    def _create_repo(api, repo_id: str, private: bool) -> None:
        """Create the repository; one that already exists in the token's namespace is reused as it is
        (its visibility is left unchanged)."""
        from modelscope_hub.errors import AlreadyExistsError

        try:
            api.create_repo(repo_id, repo_type="model",
                            visibility=VISIBILITY_PRIVATE if private else VISIBILITY_PUBLIC)
        except AlreadyExistsError:
            pass

    @staticmethod
    def _local_files(folder: Path) -> list[str]:
        out = []
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder)
                if not any(part in _SKIPPED_PARTS for part in rel.parts):
                    out.append(rel.as_posix())
        return out

    @staticmethod
    def _commit_id(info) -> str:
        infos = info if isinstance(info, list) else [info]
        for item in reversed(infos):
            if isinstance(item, dict):
                for key in ("CommitId", "commit_id", "Id", "id", "Sha", "sha"):
                    if item.get(key):
                        return str(item[key])
        return ""

    @staticmethod
    def _translate(exc: BaseException, token: str, step: str, repo_id: str) -> PublishError:
        if isinstance(exc, PublishError):
            return exc
        import requests
        from modelscope_hub import errors as e

        status = getattr(exc, "status_code", None)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        where = f"{step} {repo_id}"
        detail = _one_line(_scrub(f"{where}: {message}" + (f" (HTTP {status})" if status else ""), token))

        if isinstance(exc, (e.NetworkError, requests.ConnectionError, requests.Timeout, ConnectionError,
                            TimeoutError)):
            root = root_cause(exc)
            why = f"{type(root).__name__}: {root}" if root is not exc else message
            return PublishError("network", _one_line(_scrub(f"{where}: the connection failed ({why})", token)))
        if isinstance(exc, e.AuthenticationError):
            return PublishError("bad_token", detail)
        if isinstance(exc, (e.QuotaExceededError, e.RateLimitError)):
            return PublishError("quota", detail)
        if isinstance(exc, e.PermissionDeniedError):
            # The token is valid (a bad one gets 401) but may not write here: the namespace or the
            # repository belongs to another account.
            return PublishError("name_taken", detail)
        if isinstance(exc, e.AlreadyExistsError):
            return PublishError("name_taken", detail)
        if isinstance(exc, e.NotExistError):
            return PublishError("not_found", detail)
        if isinstance(exc, e.ServerError) and status in _GATEWAY_STATUS:
            return PublishError("network", detail)
        return PublishError("other", detail)
