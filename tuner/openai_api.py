"""The OpenAI-compatible chat API for the studio's models: ``POST /chat/completions`` (streamed as server-sent
events or not) and ``GET /models``, as a FastAPI router to include under ``/v1`` (server.py does).

Who may call it and which models it offers are injected: ``authorize(headers) -> bool`` and
``model_catalog() -> {id: ModelRef}``. The default catalog offers the embedded model and the presets as
base models, and each finished job as ``JOB_ID`` (its adapter) and ``JOB_ID:merged`` (once merged).
Replies come from ``tuner.chat.stream_reply``, so API calls and the page's chats are batched together.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 401 when ``authorize``
says no, 404 for an unknown model, 400 for a body that is not JSON or a field that is wrong, and for a
conversation longer than the model's context.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Mapping

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuner.chat import (ChatLoadError, GenerationSettings, ReplyUsage, context_length, prompt_token_ids,
                        stream_reply)

DEFAULT_MAX_TOKENS = 512
ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ModelRef:
    """What to load for a model id: as ``ChatModelCache.get(kind, model, adapter)`` takes it."""
    kind: str  # base | adapter | merged
    model: str = ""  # base and merged: a hub id, folder or the embedded model; adapter: its base ("" = recorded)
    adapter: str | None = None
    created: int = 0
    owned_by: str = "tuner"


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def default_catalog() -> dict[str, ModelRef]:
    """The embedded model and the presets (base), and every finished job: ``JOB_ID`` (adapter) and
    ``JOB_ID:merged`` when its merged folder has a config.json."""
    from tuner.jobs import JobState, list_jobs
    from tuner.spec import PRESETS

    catalog = {preset.model: ModelRef("base", preset.model) for preset in PRESETS.values()}
    for job in list_jobs():
        if job.read_status().state != JobState.SUCCEEDED:
            continue
        created = int(job.dir.stat().st_mtime)
        if (job.adapter_dir / "adapter_config.json").exists():
            catalog[job.id] = ModelRef("adapter", "", str(job.adapter_dir), created)
        if (job.merged_dir / "config.json").exists():
            catalog[f"{job.id}:merged"] = ModelRef("merged", str(job.merged_dir), None, created)
    return catalog


def model_ref_for(name: str) -> ModelRef:
    """What to load for a name given by a person (``python -m tuner serve --model``): an id of the default
    catalog (a preset, ``JOB``, ``JOB:merged``), the embedded model, an adapter or model folder, or a hub id."""
    from pathlib import Path

    from tuner.convert import read_adapter_info
    from tuner.models import EMBEDDED_MODEL, ModelNotFound, is_embedded

    catalog = default_catalog()
    if name in catalog:
        return catalog[name]
    if is_embedded(name):
        return ModelRef("base", EMBEDDED_MODEL)
    folder = Path(name).expanduser()
    if (folder / "adapter_config.json").is_file():
        return ModelRef("adapter", "", str(folder.resolve()))
    if (folder / "config.json").is_file():
        return ModelRef("merged" if read_adapter_info(folder) else "base", str(folder.resolve()))
    if folder.exists() or name.startswith(("/", ".", "~")):
        raise ModelNotFound(f"{name}: no finished job of that id, and not a model folder (config.json) or an adapter "
                            "folder (adapter_config.json).")
    return ModelRef("base", name)


def bearer_key(key: str) -> Callable[[Mapping[str, str]], bool]:
    """An ``authorize`` that lets in requests with ``Authorization: Bearer KEY``."""
    import hmac

    def authorize(headers: Mapping[str, str]) -> bool:
        given = headers.get("authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip(), key)

    return authorize


# ----------------------------------------------------------------------------------------- the request
@dataclass
class CompletionRequest:
    model: str
    system: str | None
    history: list[tuple[str, str]]
    message: str
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str]
    stream: bool
    include_usage: bool


def parse_request(raw: bytes) -> CompletionRequest:
    """The fields of a chat completion request, checked; raises ApiError(400) naming the wrong one."""
    try:
        body = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"We could not parse the JSON body of your request ({error}). The body must be a "
                            "JSON object.", code="invalid_json") from error
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", "model", "missing_required_parameter")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "Only n=1 is supported.", "n", "unsupported_value")
    system, history, message = _conversation(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ApiError(400, f"Invalid '{name}': expected an integer of at least 1, got {max_tokens!r}.", name,
                       "invalid_value")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "Invalid 'stop': expected a string or a list of at most 4 strings.", "stop",
                       "invalid_value")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "Invalid 'stream': expected a boolean.", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "Invalid 'stream_options': expected an object.", "stream_options", "invalid_type")
    return CompletionRequest(model, system, history, message, max_tokens,
                             _number(body, "temperature", 0.0, 2.0, 1.0), _number(body, "top_p", 0.0, 1.0, 1.0),
                             [s for s in stop if s], stream, bool(options.get("include_usage")))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"Invalid '{name}': expected a number from {low:g} to {high:g}, got {value!r}.", name,
                       "invalid_value")
    return float(value)


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"Invalid '{where}': only text parts are supported.", where, "invalid_value")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"Invalid '{where}': expected a string or a list of text parts.", where, "invalid_type")


def _conversation(messages) -> tuple[str | None, list[tuple[str, str]], str]:
    """(system, history pairs, the new message): what ``stream_reply`` takes. No system message: the
    model's own (what it was trained with)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of messages.", "messages", "invalid_value")
    system: list[str] = []
    history: list[tuple[str, str]] = []
    asked: list[str] = []
    for index, item in enumerate(messages):
        role = item.get("role") if isinstance(item, dict) else None
        if role not in ROLES:
            raise ApiError(400, f"Invalid 'messages[{index}].role': expected one of {', '.join(ROLES)}, got "
                                f"{role!r}.", f"messages[{index}].role", "invalid_value")
        text = _text(item.get("content"), f"messages[{index}].content")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            asked.append(text)
        else:
            history.append(("\n".join(asked), text))
            asked = []
    if not asked:
        raise ApiError(400, "The last message must be from the user.", f"messages[{len(messages) - 1}].role",
                       "invalid_value")
    return ("\n".join(system) if system else None), history, "\n".join(asked)


# ----------------------------------------------------------------------------------------- the router
def build_router(authorize: Callable[[Mapping[str, str]], bool] | None = None,
                 model_catalog: Callable[[], dict[str, ModelRef]] | None = None,
                 models=None, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> APIRouter:
    """The routes, to include with ``prefix="/v1"``. ``authorize``: None lets everyone in; ``models``: a
    ``ChatModelCache`` (default: the process's shared one, which the page can share too)."""
    if models is None:
        from tuner.model_cache import shared_cache

        models = shared_cache()
    catalog_of = model_catalog or default_catalog
    router = APIRouter()

    def check(request: Request) -> None:
        if authorize is not None and not authorize(request.headers):
            raise ApiError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    @router.get("/models")
    async def list_models(request: Request):
        try:
            check(request)
            catalog = await run_in_threadpool(catalog_of)
        except ApiError as error:
            return error.response()
        return {"object": "list", "data": [_model_card(name, ref) for name, ref in catalog.items()]}

    @router.get("/models/{name:path}")
    async def get_model(name: str, request: Request):
        try:
            check(request)
            ref = (await run_in_threadpool(catalog_of)).get(name)
            if ref is None:
                raise _unknown(name)
        except ApiError as error:
            return error.response()
        return _model_card(name, ref)

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            check(request)
            asked = parse_request(await request.body())
            ref = (await run_in_threadpool(catalog_of)).get(asked.model)
            if ref is None:
                raise _unknown(asked.model)
            chat, settings = await run_in_threadpool(_prepare, models, ref, asked, default_max_tokens)
        except ApiError as error:
            return error.response()
        reply = _Reply(chat, asked, settings)
        if asked.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await reply.whole(request)

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown_route(path: str, request: Request):
        return ApiError(404, f"Invalid URL ({request.method} {request.url.path})", code="unknown_url").response()

    return router


def _unknown(name: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist or you do not have access to it.", "model",
                    "model_not_found")


def _model_card(name: str, ref: ModelRef) -> dict:
    return {"id": name, "object": "model", "created": ref.created, "owned_by": ref.owned_by}


def _prepare(models, ref: ModelRef, asked: CompletionRequest, default_max_tokens: int):
    """Load the model (or take it from the cache), count the prompt, fit max_tokens in the context."""
    from tuner.models import ModelNotFound

    try:
        chat = models.get(ref.kind, ref.model, ref.adapter)
    except (ChatLoadError, ModelNotFound, OSError) as error:
        raise ApiError(503, f"The model `{asked.model}` could not be loaded: {error}", "model", "model_not_loaded",
                       "server_error") from error
    prompt_tokens = len(prompt_token_ids(chat, asked.message, asked.history, asked.system))
    limit = context_length(chat)
    wanted = asked.max_tokens if asked.max_tokens is not None else 1
    if prompt_tokens + wanted > limit:
        tail = f" and {asked.max_tokens} in the completion" if asked.max_tokens is not None else ""
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the messages{tail}). Please reduce "
                            "the length of the messages or completion.", "messages", "context_length_exceeded")
    max_tokens = asked.max_tokens or min(default_max_tokens, limit - prompt_tokens)
    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=asked.temperature, top_p=asked.top_p,
                                  top_k=0, repetition_penalty=1.0)
    return chat, settings


class _Reply:
    """One completion: decoded in a thread of its own (stream_reply blocks), read here without blocking the
    server; when the client goes away the decoding stops."""

    def __init__(self, chat, asked: CompletionRequest, settings: GenerationSettings):
        self.chat, self.asked, self.settings = chat, asked, settings
        self.usage = ReplyUsage()
        self.cancel = threading.Event()
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _stream(self) -> Iterator[str]:
        asked = self.asked
        return stream_reply(self.chat, asked.message, asked.history, asked.system, self.settings, stop=asked.stop,
                            usage=self.usage)

    async def texts(self) -> AsyncIterator[str]:
        """The reply so far, growing, as stream_reply yields it."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def post(kind: str, value) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, (kind, value))
            except RuntimeError:  # the server's loop is gone
                self.cancel.set()

        def work() -> None:
            stream = self._stream()
            try:
                for text in stream:
                    if self.cancel.is_set():
                        break
                    post("text", text)
            except BaseException as error:  # noqa: BLE001 - handed to the reader
                post("error", error)
            finally:
                stream.close()
                post("end", None)

        threading.Thread(target=work, name="tuner-api-reply", daemon=True).start()
        try:
            while True:
                kind, value = await inbox.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self.cancel.set()

    def _usage(self) -> dict:
        usage = self.usage
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens}

    async def whole(self, request: Request) -> JSONResponse:
        watcher = asyncio.create_task(_watch_disconnect(request, self.cancel))
        text = ""
        try:
            async for text in self.texts():
                pass
        except Exception as error:  # noqa: BLE001 - the caller gets an OpenAI-style error
            return _failure(error).response()
        finally:
            watcher.cancel()
        return JSONResponse({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.asked.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": self.usage.finish_reason or "stop"}],
            "usage": self._usage()})

    def _chunk(self, delta: dict, finish: str | None = None) -> str:
        payload = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.asked.model, "system_fingerprint": None,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.asked.include_usage:
            payload["usage"] = None
        return _sse(payload)

    async def events(self) -> AsyncIterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        sent = ""
        try:
            async for text in self.texts():
                if text.startswith(sent) and len(text) > len(sent):
                    yield self._chunk({"content": text[len(sent):]})
                    sent = text
        except Exception as error:  # noqa: BLE001 - told in the stream, as OpenAI does
            yield _sse(_failure(error).body())
            return
        yield self._chunk({}, self.usage.finish_reason or "stop")
        if self.asked.include_usage:
            yield _sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.asked.model, "system_fingerprint": None, "choices": [],
                        "usage": self._usage()})
        yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _failure(error: Exception) -> ApiError:
    from tuner.chat import PromptTooLong

    if isinstance(error, PromptTooLong):
        return ApiError(400, str(error), "messages", "context_length_exceeded")
    return ApiError(500, f"The reply failed: {type(error).__name__}: {error}", None, "generation_failed",
                    "server_error")


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Stop the decoding when the client of a (non-streamed) request hangs up."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.5)

