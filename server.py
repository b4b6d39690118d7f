"""One process, one port: the Gradio page at ``/`` and the OpenAI-compatible API at ``/v1`` (tuner/openai_api.py).

    import server
    server.serve(build_app(), "127.0.0.1", 7860, css=CSS, show_error=False, footer_links=["api", "settings"])

The page is mounted with ``gr.mount_gradio_app``: its queue starts with the server (the app's lifespan), and
a ``gr.LoginButton``'s OAuth routes (``/login/huggingface``, ``/login/callback``, ``/logout``) sit at the root
as with ``launch()``. The ``/v1`` routes are matched before the page's.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Mapping

from fastapi import FastAPI

from tuner.openai_api import bearer_key, build_router

# launch() arguments that are not mount_gradio_app's: what serve does with them.
_UVICORN = ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password")


def build_server(blocks=None, authorize: Callable[[Mapping[str, str]], bool] | None = None, *,
                 model_catalog=None, models=None, **mount_kwargs: Any) -> FastAPI:
    """The ASGI app: ``/v1`` (the API), and ``blocks`` at ``/`` when given (None: the API alone)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(build_router(authorize, model_catalog, models), prefix="/v1")
    if blocks is not None:
        import gradio as gr

        gr.mount_gradio_app(app, blocks, path="/", **mount_kwargs)
    return app


def serve(blocks, host: str, port: int, authorize: Callable[[Mapping[str, str]], bool] | None = None, *,
          model_catalog=None, models=None, **launch_kwargs: Any) -> None:
    """Serve the page and the API on ``host:port`` until stopped (Ctrl-C). ``launch_kwargs``: what
    ``Blocks.launch`` would take, as far as a mounted app has it (css, theme, show_error, footer_links,
    auth, allowed_paths, max_file_size, ...; ``max_threads``; ``ssl_keyfile``/``ssl_certfile``; ``quiet``).
    ``authorize``: who may call ``/v1`` (None: everyone, unless ``TUNER_API_KEY`` is set: then that key as a
    bearer token)."""
    import uvicorn

    if authorize is None and os.environ.get("TUNER_API_KEY"):
        authorize = bearer_key(os.environ["TUNER_API_KEY"])
    quiet = bool(launch_kwargs.pop("quiet", False))
    ssl = {name: launch_kwargs.pop(name) for name in _UVICORN if name in launch_kwargs}
    max_threads = launch_kwargs.pop("max_threads", None)
    if blocks is not None and max_threads:
        blocks.max_threads = int(max_threads)
    mount_kwargs = _mount_kwargs(launch_kwargs) if blocks is not None else {}
    if blocks is not None:
        mount_kwargs.update(server_name=host, server_port=port)
    app = build_server(blocks, authorize, model_catalog=model_catalog, models=models, **mount_kwargs)
    if not quiet:
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        print(f"* Running on local URL:  http{'s' if ssl else ''}://{shown}:{port}"
              + ("" if blocks is not None else " (API only)") + f"\n* OpenAI-compatible API: /v1 "
              f"({'key required' if authorize else 'open to every caller'})", flush=True)
    # open event streams (a page's heartbeat, an API stream) must not hold a stop (Ctrl-C, SIGTERM) for ever
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                                  **ssl)).run()


def _mount_kwargs(launch_kwargs: dict) -> dict:
    import gradio as gr

    accepted = set(inspect.signature(gr.mount_gradio_app).parameters) - {"app", "blocks", "path"}
    unknown = sorted(set(launch_kwargs) - accepted)
    if unknown:
        raise TypeError(f"serve() does not take {', '.join(unknown)}: a mounted Gradio app accepts "
                        f"{', '.join(sorted(accepted - {'server_name', 'server_port'}))} (host and port are "
                        "serve's own arguments)")
    return dict(launch_kwargs)
