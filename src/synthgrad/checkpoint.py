"""Checkpoints that survive a kill: atomic writes, and loading with `weights_only=True`."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
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
    """Load a checkpoint written by `save_checkpoint`, refusing anything but tensors and plain containers.

    A file that is missing, empty, truncated, corrupt, or holds anything else (a pickle that would run code) raises
    `SynthgradError` in one line naming the file and what is wrong with it. The file is only ever read with
    `weights_only=True`, and the message never repeats torch's advice to retry without it (unsafe for a file
    that failed this check)."""
    path = Path(path)
    if path.is_dir():
        raise SynthgradError(f"checkpoint {path} is a folder, not a file: {_FIX}")
    if not path.is_file():
        raise SynthgradError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol: one line on stderr, not two
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a checkpoint
        raise SynthgradError(f"checkpoint {path} {_what_is_wrong(path, e)}: {_FIX}") from None
    if not isinstance(state, dict):
        raise SynthgradError(f"checkpoint {path} holds a {type(state).__name__}, not a synthgrad checkpoint: {_FIX}")
    return state


_FIX = "put back an intact copy, or start the run anew in another folder"


def _what_is_wrong(path: Path, e: Exception) -> str:
    """What `torch.load(weights_only=True)` found wrong with `path`, in our words (torch's own message suggests
    loading with weights_only=False, which is exactly what a file that failed must not get)."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"is unreadable ({err.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"is unreadable ({err.strerror})"
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e) or "Weights only" in str(e):
        return "is not a checkpoint synthgrad wrote (not only tensors and plain containers), and was not loaded"
    # The file reads; torch's reader failed on its contents (a truncated zip can end in OSError EINVAL, "zip archive"
    # RuntimeErrors or EOFError): a checkpoint archive that is incomplete or damaged.
    if head == b"PK\x03\x04" or (isinstance(e, RuntimeError) and "zip archive" in str(e)):
        return f"is truncated or corrupt ({size} bytes, not a complete checkpoint archive)"
    return f"is not a synthgrad checkpoint ({type(e).__name__} while reading it)"


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(data))
