"""An adapter uploaded as a zip: unpacked safely into the workspace, found wherever it sits inside."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from tuner import paths

MAX_UNPACKED_BYTES = 8 * 2**30


class AdapterUploadError(ValueError):
    """The zip is not an adapter (say what was expected)."""


def unpack_adapter_zip(zip_path: str | Path) -> Path:
    """Unpack ``zip_path`` under ``TUNER_HOME/uploads`` and return the folder holding adapter_config.json."""
    zip_path = Path(zip_path)
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()[:12]
    target = paths.home() / "uploads" / f"{zip_path.stem}-{digest}"
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise AdapterUploadError(f"{zip_path.name}: unpacks to more than 8 GiB; is this an adapter?")
            for member in members:
                destination = (target / member.filename).resolve()
                if not destination.is_relative_to(target.resolve()):
                    raise AdapterUploadError(f"{zip_path.name}: {member.filename} points outside the archive")
            archive.extractall(target)
    except zipfile.BadZipFile as error:
        raise AdapterUploadError(f"{zip_path.name} is not a zip file ({error})") from error
    found = sorted(target.rglob("adapter_config.json"), key=lambda p: len(p.parts))
    if not found:
        raise AdapterUploadError(f"{zip_path.name} has no adapter_config.json: zip the adapter folder "
                                 "(adapter_config.json + adapter_model.safetensors)")
    return found[0].parent
