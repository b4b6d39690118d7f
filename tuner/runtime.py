"""Where the studio runs, and what it may do there.

One question, asked the same way by the page, the CLI and the tests: ``current_place()``. It reads the
environment the hubs set (see ../shared/SPACES.md):

- Hugging Face Space: ``SPACE_ID`` (and ``SYSTEM=spaces``); ZeroGPU: ``SPACES_ZERO_GPU=true``;
- ModelScope studio: ``TUNER_PLATFORM=modelscope``, which ``ms_deploy.json`` sets (the studio's own
  variables are not documented);
- OpenXLab app: code under ``/home/xlab-app-center`` (where OpenXLab runs every app), or
  ``TUNER_PLATFORM=openxlab``;
- anything else: ``local`` (a laptop or a GPU server).

``TUNER_PLATFORM`` overrides the detection (local, hf, zerogpu, modelscope, openxlab).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PLATFORMS = ("local", "hf", "zerogpu", "modelscope", "openxlab")
PLATFORM_NAMES = {"local": "this machine", "hf": "a Hugging Face Space", "zerogpu": "a Hugging Face ZeroGPU Space",
                  "modelscope": "a ModelScope studio", "openxlab": "an OpenXLab app"}
OPENXLAB_APP_ROOT = "/home/xlab-app-center"
BUCKET = Path("/data")  # where a Space mounts a storage bucket


@dataclass(frozen=True)
class Place:
    platform: str  # one of PLATFORMS
    space_id: str = ""  # owner/name on a hub
    hardware: str = ""  # "CPU", "NVIDIA L4", "ZeroGPU"…
    gpu: bool = False  # a CUDA device this process may use for training
    persistent: bool = True  # jobs and data sets survive a restart

    @property
    def hosted(self) -> bool:
        return self.platform != "local"

    @property
    def zerogpu(self) -> bool:
        return self.platform == "zerogpu"

    @property
    def can_train(self) -> bool:
        """ZeroGPU lends a GPU for a minute per call: no training fits. Elsewhere a GPU, or the CPU for
        the embedded model."""
        return not self.zerogpu

    def describe(self) -> str:
        where = PLATFORM_NAMES[self.platform] + (f" ({self.space_id})" if self.space_id else "")
        return f"{where} · {self.hardware}" if self.hardware else where


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "t", "true", "yes")


def detect_platform(env: dict | None = None, cwd: Path | None = None) -> str:
    env = os.environ if env is None else env
    forced = env.get("TUNER_PLATFORM", "").strip().lower()
    if forced in PLATFORMS:
        return forced
    if _truthy(env.get("SPACES_ZERO_GPU")):
        return "zerogpu"
    if env.get("SPACE_ID") or env.get("SYSTEM") == "spaces":
        return "hf"
    where = str(cwd or Path(__file__).resolve())
    if where.startswith(OPENXLAB_APP_ROOT):
        return "openxlab"
    return "local"


def _hardware(platform: str) -> tuple[str, bool]:
    if platform == "zerogpu":
        return "ZeroGPU", False
    from tuner.spec import has_cuda

    if has_cuda():
        import torch

        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return (f"{count}× {name}" if count > 1 else name), True
    cores = os.environ.get("CPU_CORES") or str(os.cpu_count() or "?")
    return f"CPU, {cores} cores", False


def bucket_mounted(bucket: Path = BUCKET) -> bool:
    return bucket.is_dir() and os.access(bucket, os.W_OK)


def workspace_home(platform: str, env: dict | None = None, bucket: Path = BUCKET) -> tuple[Path | None, bool]:
    """Where jobs and data sets should live, and whether they survive a restart there.

    ``TUNER_HOME`` wins (None: keep it); a hosted app uses the storage bucket at /data when one is mounted;
    otherwise a hosted app's disk is lost at restart.
    """
    env = os.environ if env is None else env
    if env.get("TUNER_HOME"):
        home = Path(env["TUNER_HOME"])
        return None, platform == "local" or _inside(home, bucket)
    if platform == "local":
        return None, True
    if bucket_mounted(bucket):
        return bucket / "tuner-workspace", True
    return None, False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


_PLACE: Place | None = None


def current_place(refresh: bool = False) -> Place:
    """Where this process runs (computed once; ``configure_workspace`` must have run before on a hub)."""
    global _PLACE
    if _PLACE is None or refresh:
        platform = detect_platform()
        hardware, gpu = _hardware(platform)
        _, persistent = workspace_home(platform)
        _PLACE = Place(platform, os.environ.get("SPACE_ID", ""), hardware, gpu, persistent)
    return _PLACE


def configure_workspace() -> Place:
    """Point TUNER_HOME at the bucket on a hub where one is mounted; call once at start-up."""
    platform = detect_platform()
    home, _ = workspace_home(platform)
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        os.environ["TUNER_HOME"] = str(home)
        os.environ.setdefault("TUNER_CACHE", str(home.parent / "tuner-cache"))
    return current_place(refresh=True)
