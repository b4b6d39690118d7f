"""Publish a job's adapter or merged model, the chat app, or the studio itself to a hub: stage, check, push.

Tokens come from the caller (a password field) or the usual variables; they are handed to the hub's
client and nowhere else: not to a log, not to the job folder, not into what is pushed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from deploy.hubs.base import PublishError, PushResult
from deploy.stage import check_no_secrets, stage_adapter, stage_app, stage_merged

HUBS = ("hf", "modelscope", "openxlab")
WHAT = ("adapter", "model", "app", "studio")
TOKEN_VARIABLES = {"hf": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), "modelscope": ("MODELSCOPE_API_TOKEN",)}


def resolve_token(hub: str, given: str | None = None) -> str:
    """The token to use: the one given, else the hub's usual variables (OpenXLab: "AK:SK")."""
    if given:
        return given.strip()
    if hub == "openxlab":
        ak, sk = os.environ.get("OPENXLAB_AK", ""), os.environ.get("OPENXLAB_SK", "")
        return f"{ak}:{sk}" if ak and sk else ""
    return next((os.environ[v] for v in TOKEN_VARIABLES[hub] if os.environ.get(v)), "")


def hub_client(hub: str, endpoint: str | None = None):
    if hub == "hf":
        from deploy.hubs.huggingface import HuggingFaceHub

        return HuggingFaceHub(endpoint)
    if hub == "modelscope":
        from deploy.hubs.modelscope import ModelScopeHub

        return ModelScopeHub(endpoint)
    if hub == "openxlab":
        from deploy.hubs.openxlab import OpenXLabHub

        return OpenXLabHub(endpoint)
    raise PublishError("other", f"unknown hub {hub!r}; choose one of {', '.join(HUBS)}")


def stage(what: str, out_dir: Path, repo_id: str, job=None, hub: str = "hf", model_repo: str = "",
          license: str = "apache-2.0", title: str = "", hardware: str | None = None) -> Path:
    """Write exactly the folder that would be pushed (``hardware``: the studio's, see deploy/studio.py)."""
    if what == "adapter":
        return stage_adapter(_need(job), out_dir, repo_id, license)
    if what == "model":
        return stage_merged(_need(job), out_dir, repo_id, license)
    if what == "app":
        return stage_app(out_dir, model_repo, hub, title or (repo_id.split("/")[-1] if repo_id else "My assistant"))
    if what == "studio":
        from deploy.studio import stage_studio

        return stage_studio(out_dir, hub, repo_id, hardware)
    raise PublishError("other", f"cannot publish {what!r}; choose one of {', '.join(WHAT)}")


def _need(job):
    if job is None:
        raise PublishError("other", "a job is needed: pass --job JOB_ID")
    return job


def publish(what: str, hub: str, repo_id: str, *, job=None, token: str | None = None, private: bool = False,
            model_repo: str = "", endpoint: str | None = None, license: str = "apache-2.0",
            hardware: str | None = None, progress: Callable[[str], None] = lambda _: None) -> PushResult:
    if what == "studio":  # a Space on hf; ModelScope and OpenXLab answer with the steps to take by hand
        from deploy.studio import publish_studio

        return publish_studio(hub, repo_id, token=token, hardware=hardware, private=private, endpoint=endpoint,
                              progress=progress)
    token = resolve_token(hub, token)
    if not token:
        raise PublishError("bad_token", f"no token given for {hub}")
    if what == "app" and not model_repo and job is not None:
        raise PublishError("other", "publish the adapter or model first, then give its repository as model_repo")
    with tempfile.TemporaryDirectory(prefix="tuner-publish-") as tmp:
        progress("staging files")
        folder = stage(what, Path(tmp) / "stage", repo_id, job, hub, model_repo, license)
        check_no_secrets(folder, [token, *token.split(":")])
        progress(f"uploading {sum(1 for p in folder.rglob('*') if p.is_file())} files to {hub}")
        repo_type = "space" if what == "app" else "model"
        result = hub_client(hub, endpoint).push_folder(folder, repo_id, token=token, private=private,
                                                       repo_type=repo_type,
                                                       commit_message=f"Upload {what} from tuner")
        progress(f"done: {result.url}")
        return result
