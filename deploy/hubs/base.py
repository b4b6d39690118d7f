"""The interface every hub module implements, and the errors a person can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ERROR_KINDS = ("bad_token", "name_taken", "network", "quota", "not_found", "other")

_ADVICE = {
    "bad_token": "The token was refused: check it is a write token for this account.",
    "name_taken": "That repository name is taken by someone else: choose another name.",
    "network": "The hub could not be reached: check the network (and any proxy) and try again.",
    "quota": "The hub refused for lack of space or a rate limit: free space or wait, then try again.",
    "not_found": "The hub does not know that repository or namespace.",
    "other": "The hub refused the upload.",
}


class PublishError(Exception):
    """A push that did not happen, with what kind of failure it was and what to do."""

    def __init__(self, kind: str, detail: str = ""):
        if kind not in ERROR_KINDS:
            kind = "other"
        self.kind = kind
        self.detail = detail
        super().__init__(f"{_ADVICE[kind]} ({detail})" if detail else _ADVICE[kind])


@dataclass
class PushResult:
    url: str  # the page a person opens
    repo_id: str
    commit: str = ""
    files: list[str] = field(default_factory=list)


class HubClient(Protocol):
    name: str  # "hf", "modelscope", "openxlab"

    def push_folder(self, folder: Path, repo_id: str, *, token: str, private: bool = False,
                    repo_type: str = "model", commit_message: str = "Upload from tuner") -> PushResult:
        """Create the repository if needed (public or private) and upload every file of ``folder``."""
        ...


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a requests/urllib3/oss2 chain, for a short network message."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = next((a for a in reversed(getattr(exc, "args", ())) if isinstance(a, BaseException)), None)
        inner = inner or getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc
