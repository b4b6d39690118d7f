"""The one guard every Gradio event goes through, on the server.

Every event of the Blocks is an HTTP endpoint anyone can call (``gradio_client``), whatever the page
hides. ``secure_events`` wraps the function of every event after the page is built: it works out who
calls (Hugging Face sign-in, or a session in which the owner's password was given), refuses what
``tuner.access`` does not allow with a clear error before the callback runs, and makes the caller
known to the callback (``current_caller``). An event is owner-only unless its function was marked
``public``: a new handler is safe by default.
"""

from __future__ import annotations

import contextvars
import inspect
import os
from typing import Any, Callable

import gradio as gr

from tuner.access import OWNER, PUBLIC, AccessDenied, Caller, Mode, OwnerSessions, caller_for, may

_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("tuner_caller", default=Caller(owner=True,
                                                                                                  how="local"))
_TOKEN: contextvars.ContextVar[str] = contextvars.ContextVar("tuner_oauth_token", default="")
_SESSION: contextvars.ContextVar[str] = contextvars.ContextVar("tuner_session", default="")
OWNER_SESSIONS = OwnerSessions()
_SPECIAL = (gr.Request, gr.OAuthProfile, gr.OAuthToken)


def public(fn: Callable) -> Callable:
    """Mark an event function as open to everyone (it must then check its own arguments)."""
    if inspect.ismethod(fn):  # a bound method takes no attributes: mark a plain function that calls it
        method = fn

        def fn(*args):
            return method(*args)
        fn.__name__ = method.__name__
    fn.__tuner_access__ = PUBLIC
    return fn


def current_caller() -> Caller:
    return _CALLER.get()


def current_oauth_token() -> str:
    """The signed-in user's Hugging Face token (OAuth), or '' (off a Space it is a placeholder: unused)."""
    return _TOKEN.get()


def current_session() -> str:
    return _SESSION.get()


def hf_sign_in_enabled() -> bool:
    """A Space with ``hf_oauth`` (OAUTH_CLIENT_ID is set), or ``TUNER_HF_SIGN_IN=1`` for Gradio's local mock."""
    return bool(os.environ.get("OAUTH_CLIENT_ID")) or os.environ.get("TUNER_HF_SIGN_IN") == "1"


def _kind(annotation: Any) -> type | None:
    for special in _SPECIAL:
        if annotation in (special, special | None):
            return special
    return None


def _own_special_params(fn: Callable) -> list[type | None]:
    """For each positional parameter of ``fn``: the special type Gradio would fill in, or None."""
    try:
        hints = gr.utils.get_type_hints(fn)
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = []
    for param in params:
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            break
        kinds.append(_kind(hints.get(param.name)))
    return kinds


def _arguments(fn: Callable, values: list, specials: dict) -> list:
    kinds = _own_special_params(fn)
    if not any(kinds):
        return values
    values, args = list(values), []
    for kind in kinds:
        if kind is not None:
            args.append(specials[kind])
        elif values:
            args.append(values.pop(0))
    return args + values


def _wrap(fn: Callable, inputs: int, mode: Mode, oauth: bool) -> Callable:
    action = getattr(fn, "__tuner_access__", OWNER)

    def enter(args: tuple) -> tuple[list, list]:
        values = list(args[:inputs])
        request = args[inputs] if len(args) > inputs else None
        profile = args[inputs + 1] if oauth and len(args) > inputs + 1 else None
        token = args[inputs + 2] if oauth and len(args) > inputs + 2 else None
        session = getattr(request, "session_hash", "") or ""
        caller = caller_for(mode, getattr(profile, "username", "") or "", session in OWNER_SESSIONS)
        if not may(mode, caller, action):
            from tuner.access import require

            try:
                require(mode, caller, action)
            except AccessDenied as denied:
                raise gr.Error(str(denied), print_exception=False) from None
        context = (caller, getattr(token, "token", "") or "", session)
        specials = {gr.Request: request, gr.OAuthProfile: profile, gr.OAuthToken: token}
        return _arguments(fn, values, specials), context

    def run_in(context: tuple, step: Callable):
        # Set and reset in the same call: Gradio runs each step of a generator in a worker thread of its own.
        tokens = [var.set(value) for var, value in zip((_CALLER, _TOKEN, _SESSION), context)]
        try:
            return step()
        finally:
            for var, token in zip((_CALLER, _TOKEN, _SESSION), tokens):
                var.reset(token)

    if inspect.isgeneratorfunction(fn):
        def guarded(*args):
            call_args, context = enter(args)
            steps = run_in(context, lambda: fn(*call_args))
            done = object()
            while (item := run_in(context, lambda: next(steps, done))) is not done:
                yield item
    else:
        def guarded(*args):
            call_args, context = enter(args)
            return run_in(context, lambda: fn(*call_args))

    params = [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(inputs)]
    annotations: dict[str, Any] = {"request": gr.Request}
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
    if oauth:
        annotations.update(profile=gr.OAuthProfile | None, token=gr.OAuthToken | None)
        params += [inspect.Parameter("profile", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                     annotation=gr.OAuthProfile | None),
                   inspect.Parameter("token", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.OAuthToken | None)]
    guarded.__signature__ = inspect.Signature(params)
    guarded.__annotations__ = annotations
    guarded.__name__ = getattr(fn, "__name__", "event")
    guarded.__tuner_access__ = action
    guarded.__tuner_guarded__ = True
    return guarded


def secure_events(blocks: gr.Blocks, mode: Mode) -> dict[str, str]:
    """Wrap every event function of ``blocks``; returns {api name: "public" | "owner"} for the record."""
    oauth = blocks.expects_oauth
    table = {}
    for block_fn in blocks.fns.values():
        if block_fn.fn is None or getattr(block_fn.fn, "__tuner_guarded__", False):
            continue
        block_fn.fn = _wrap(block_fn.fn, len(block_fn.inputs), mode, oauth)
        table[str(block_fn.api_name or block_fn.name)] = block_fn.fn.__tuner_access__
    return table
