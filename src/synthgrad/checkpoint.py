"""Checkpoints that survive a kill: atomic writes, and loading with `weights_only=True`."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from synthgrad.errors import SynthgradError


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results should be as readable as any other file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save `state` (tensors, numbers, strings, lists, dicts) so that `path` is always a complete checkpoint."""
    _atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, refusing anything but tensors and plain containers."""
    path = Path(path)
    if not path.is_file():
        raise SynthgradError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a checkpoint
        detail = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())[:200]  # one line, no terminal colours
        raise SynthgradError(f"checkpoint {path} is unreadable ({type(e).__name__}: {detail})") from None


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(data))
