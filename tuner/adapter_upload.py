"""An adapter uploaded as a zip: checked entry by entry, unpacked under a generated name, found wherever it
sits inside.

Refused before anything is written: absolute names, ``..``, links, more than ``MAX_ENTRIES`` entries, an
entry over ``MAX_ENTRY_BYTES`` or a total over ``MAX_UNPACKED_BYTES`` (as declared, and as really read:
a zip bomb can lie about its sizes). Limits can be lowered with ``TUNER_MAX_ADAPTER_BYTES``.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from tuner import paths

MAX_UNPACKED_BYTES = int(os.environ.get("TUNER_MAX_ADAPTER_BYTES", 8 * 2**30))
MAX_ENTRY_BYTES = MAX_UNPACKED_BYTES
MAX_ENTRIES = 1000
_CHUNK = 1 << 20


class AdapterUploadError(ValueError):
    """The zip is not an adapter, or not a safe one (say what was wrong)."""


def check_members(archive: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_ENTRIES:
        raise AdapterUploadError(f"{name}: {len(members)} entries (at most {MAX_ENTRIES}); is this an adapter?")
    total = 0
    for member in members:
        path = PurePosixPath(member.filename.replace("\\", "/"))
        drive = bool(path.parts) and len(path.parts[0]) == 2 and path.parts[0][1] == ":"  # C:/...
        if path.is_absolute() or drive:
            raise AdapterUploadError(f"{name}: {member.filename} is an absolute path")
        if ".." in path.parts:
            raise AdapterUploadError(f"{name}: {member.filename} points outside the archive")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise AdapterUploadError(f"{name}: {member.filename} is a link; links are not unpacked")
        if member.file_size > MAX_ENTRY_BYTES:
            raise AdapterUploadError(f"{name}: {member.filename} unpacks to {member.file_size} bytes, too large")
        total += member.file_size
        if total > MAX_UNPACKED_BYTES:
            raise AdapterUploadError(f"{name}: unpacks to more than {MAX_UNPACKED_BYTES} bytes; is this an adapter?")
    return members


def _extract(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path, name: str) -> None:
    written = 0
    for member in members:
        destination = target / PurePosixPath(member.filename.replace("\\", "/"))
        if member.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source, destination.open("wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > MAX_UNPACKED_BYTES or out.tell() + len(chunk) > MAX_ENTRY_BYTES:
                    raise AdapterUploadError(f"{name}: unpacks to more than it declares; not unpacked")
                out.write(chunk)


def unpack_adapter_zip(zip_path: str | Path) -> Path:
    """Unpack ``zip_path`` under ``TUNER_HOME/uploads/<generated>`` and return the folder holding
    adapter_config.json."""
    zip_path = Path(zip_path)
    target = paths.home() / "uploads" / uuid.uuid4().hex[:16]
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = check_members(archive, zip_path.name)
            target.mkdir(parents=True)
            _extract(archive, members, target, zip_path.name)
    except BaseException as error:
        shutil.rmtree(target, ignore_errors=True)  # nothing half-unpacked stays behind
        if isinstance(error, zipfile.BadZipFile):
            raise AdapterUploadError(f"{zip_path.name} is not a valid zip file ({error})") from error
        raise
    found = sorted(target.rglob("adapter_config.json"), key=lambda p: len(p.parts))
    if not found:
        shutil.rmtree(target, ignore_errors=True)
        raise AdapterUploadError(f"{zip_path.name} has no adapter_config.json: zip the adapter folder "
                                 "(adapter_config.json + adapter_model.safetensors)")
    return found[0].parent
