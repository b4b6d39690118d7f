"""How to run XTuner's own command line from here: which ``xtuner``, and the environment it needs."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from tuner import paths
from tuner.xtuner_compat import patched_environment


def tool_environment() -> dict[str, str]:
    env = patched_environment()
    # `xtuner` starts its tools as "python" (and "torchrun") from PATH: make that ours.
    shim = paths.cache() / "bin" / hashlib.sha256(sys.executable.encode()).hexdigest()[:12]  # one per Python
    shim.mkdir(parents=True, exist_ok=True)
    launcher = shim / "python"
    script = f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'  # not a link: a venv is found from the path run
    if launcher.is_symlink() or not launcher.exists() or launcher.read_bytes() != script.encode():
        launcher.unlink(missing_ok=True)
        launcher.write_text(script)
        launcher.chmod(0o755)
    env["PATH"] = os.pathsep.join([str(shim), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def xtuner_command() -> list[str]:
    """How to start the ``xtuner`` command line of the Python that runs us."""
    script = Path(sys.executable).parent / "xtuner"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from xtuner import cli; sys.argv[0] = 'xtuner'; sys.exit(cli())"]
