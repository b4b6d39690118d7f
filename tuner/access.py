"""Who may do what: plain Python, no Gradio, so the page, the OpenAI-compatible API and the CLI ask the
same question the same way.

Modes (``TUNER_MODE``; the default follows where the app runs):

- ``local``: everything, no sign-in (the default off a hub, with no password configured);
- ``owner``: visitors chat with finished jobs and the preset models and see before/after; data,
  training, uploads, free model paths and publishing need the owner (the default on a hub, or when
  ``TUNER_OWNER_PASSWORD`` is set);
- ``demo``: chat only, for everyone.

The owner is a Hugging Face user named in ``SPACE_AUTHOR_NAME`` or ``TUNER_OWNERS`` (signed in with
Hugging Face on a Space), or whoever gives ``TUNER_OWNER_PASSWORD`` (compared in constant time, failed
attempts rate-limited).
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

MODES = ("local", "owner", "demo")
# Actions anyone may take in every mode: look at the page, switch its language, chat.
PUBLIC = "public"
OWNER = "owner"


class Mode(str, Enum):
    LOCAL = "local"
    OWNER = "owner"
    DEMO = "demo"


class AccessDenied(Exception):
    """The caller may not do this here (the message says who may, and how)."""


def configured_mode(env: dict | None = None, hosted: bool | None = None) -> Mode:
    env = os.environ if env is None else env
    forced = env.get("TUNER_MODE", "").strip().lower()
    if forced in MODES:
        return Mode(forced)
    if hosted is None:
        from tuner.runtime import detect_platform

        hosted = detect_platform(env) != "local"
    if hosted or env.get("TUNER_OWNER_PASSWORD"):
        return Mode.OWNER
    return Mode.LOCAL


def owner_names(env: dict | None = None) -> set[str]:
    env = os.environ if env is None else env
    names = {env.get("SPACE_AUTHOR_NAME", "")}
    names |= {name.strip() for name in env.get("TUNER_OWNERS", "").split(",")}
    return {name.lower() for name in names if name}


@dataclass(frozen=True)
class Caller:
    """Who sends a request: their Hugging Face name when signed in, and whether they are the owner."""

    user: str = ""
    owner: bool = False
    how: str = ""  # "hf", "password", "local"

    @property
    def label(self) -> str:
        return self.user or ("owner" if self.owner else "visitor")


def caller_for(mode: Mode, hf_user: str = "", password_session: bool = False, env: dict | None = None) -> Caller:
    if mode == Mode.LOCAL:
        return Caller(hf_user, True, "local")
    if mode == Mode.DEMO:
        return Caller(hf_user, False)
    if hf_user and hf_user.lower() in owner_names(env):
        return Caller(hf_user, True, "hf")
    if password_session:
        return Caller(hf_user, True, "password")
    return Caller(hf_user, False)


def may(mode: Mode, caller: Caller, action: str) -> bool:
    if action == PUBLIC:
        return True
    if mode == Mode.DEMO:
        return False
    return caller.owner


def require(mode: Mode, caller: Caller, action: str = OWNER) -> None:
    if may(mode, caller, action):
        return
    if mode == Mode.DEMO:
        raise AccessDenied("This studio is a chat-only demo: training, data and publishing are turned off here.")
    how = []
    if os.environ.get("SPACE_ID") or os.environ.get("SYSTEM") == "spaces":
        how.append("sign in with Hugging Face as the Space's owner")
    if os.environ.get("TUNER_OWNER_PASSWORD"):
        how.append("enter the owner's password")
    raise AccessDenied("Sign in as the owner to do this" + (f" ({' or '.join(how)})" if how else "") + ".")


class PasswordGate:
    """The owner's password: constant-time comparison, and at most ``limit`` failures per ``window``
    seconds per client (and ``global_limit`` in all), after which every attempt is refused until the
    window has passed."""

    def __init__(self, password: str | None = None, limit: int = 5, window: float = 300.0,
                 global_limit: int = 50):
        self._password = password if password is not None else os.environ.get("TUNER_OWNER_PASSWORD", "")
        self.limit, self.window, self.global_limit = limit, window, global_limit
        self._failures: dict[str, deque] = {}
        self._all: deque = deque()
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self._password)

    def _recent(self, times: deque, now: float) -> int:
        while times and now - times[0] > self.window:
            times.popleft()
        return len(times)

    def check(self, attempt: str, client: str) -> bool:
        """True for the right password; AccessDenied while the client (or everyone) is rate-limited."""
        now = time.monotonic()
        with self._lock:
            mine = self._failures.setdefault(client, deque())
            if self._recent(mine, now) >= self.limit or self._recent(self._all, now) >= self.global_limit:
                wait = int(self.window - (now - (mine[0] if len(mine) >= self.limit else self._all[0]))) + 1
                raise AccessDenied(f"Too many wrong passwords: try again in {wait} s.")
            good = self.configured and hmac.compare_digest(attempt.encode(), self._password.encode())
            if not good:
                mine.append(now)
                self._all.append(now)
            return good


class OwnerSessions:
    """Page sessions in which the owner's password was given (in memory: a restart signs everyone out)."""

    def __init__(self, lifetime: float = 12 * 3600):
        self.lifetime = lifetime
        self._sessions: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, session: str) -> None:
        if session:
            with self._lock:
                self._sessions[session] = time.monotonic() + self.lifetime

    def remove(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def __contains__(self, session: str) -> bool:
        with self._lock:
            expiry = self._sessions.get(session or "")
            return expiry is not None and expiry > time.monotonic()


def api_key_ok(mode: Mode, authorization: str, env: dict | None = None) -> bool:
    """The OpenAI-compatible API follows the Chat tab, with an API key in owner mode
    (``Authorization: Bearer $TUNER_API_KEY``; with no key configured, the owner password works)."""
    if mode != Mode.OWNER:
        return True
    env = os.environ if env is None else env
    keys = [k for k in (env.get("TUNER_API_KEY", ""), env.get("TUNER_OWNER_PASSWORD", "")) if k]
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(given.strip().encode(), k.encode()) for k in keys)


# Models -----------------------------------------------------------------------------------------

def visitor_models() -> list[str]:
    """The base models a visitor may pick: the embedded default and the presets."""
    from tuner.models import EMBEDDED_MODEL
    from tuner.spec import PRESETS

    return list(dict.fromkeys([EMBEDDED_MODEL, *(preset.model for preset in PRESETS.values())]))


def model_roots(env: dict | None = None) -> list[Path]:
    """Folders the owner may load models from on a hub (``TUNER_MODEL_ROOTS``, ``:``-separated; by default
    the workspace, the cache and the Hugging Face cache)."""
    env = os.environ if env is None else env
    if env.get("TUNER_MODEL_ROOTS"):
        return [Path(p).expanduser() for p in env["TUNER_MODEL_ROOTS"].split(os.pathsep) if p]
    from tuner import paths

    hf_cache = Path(env.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return [paths.home(), paths.cache(), hf_cache]


def looks_like_path(model: str) -> bool:
    model = (model or "").strip()
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def check_model_choice(mode: Mode, caller: Caller, model: str) -> None:
    """A visitor picks from ``visitor_models``; the owner on a hub may also name a hub id or a folder under
    ``model_roots``; locally anything goes."""
    from tuner.models import is_embedded

    model = (model or "").strip()
    if mode == Mode.LOCAL or is_embedded(model):
        return
    if not caller.owner or mode == Mode.DEMO:
        if model not in visitor_models():
            raise AccessDenied("Choose a model from the list: visitors cannot name other models.")
        return
    if looks_like_path(model):
        folder = Path(model).expanduser().resolve()
        if not any(folder.is_relative_to(root.expanduser().resolve()) for root in model_roots()):
            raise AccessDenied("That folder is outside the folders models may be loaded from "
                               "(TUNER_MODEL_ROOTS).")
