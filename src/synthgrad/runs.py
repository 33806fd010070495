"""What every training run shares, whatever it trains: its output folder, resuming it, its log, its progress bar.

An output folder holds one run. Starting a run in a folder that holds another is an error (nothing is silently
overwritten); `--resume` continues the run in it, and refuses if the run was started with another config, except
for the fields a caller declares resumable (the epoch or sample budget, where the data and the output live).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from synthgrad.checkpoint import load_checkpoint
from synthgrad.errors import ConfigError

CHECKPOINT = "checkpoint.pt"


def resume_mismatch(
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    resumable: Collection[str],
    implied: Mapping[str, Any] | None = None,
) -> str | None:
    """'key: old -> new, ...' for the fields that differ and may not, or None.

    `implied` gives, for a field added to a config after some checkpoints were written, the value those
    checkpoints ran with; a saved config without the field is read as having it.
    """
    implied = implied or {}
    old = {k: saved[k] if k in saved else implied.get(k) for k in now}
    differ = sorted(k for k in now if k not in resumable and old[k] != now[k])
    return ", ".join(f"{k}: {old[k]!r} -> {now[k]!r}" for k in differ) or None


def prepare_out(
    config: Mapping[str, Any],
    out: Path,
    resume: bool,
    resumable: Collection[str],
    implied: Mapping[str, Any] | None = None,
) -> dict | None:
    """Create `out`, or load its checkpoint for `resume`; refuse to overwrite a run or resume a different one
    (`resumable` and `implied` as in `resume_mismatch`).

    Returns the checkpoint to resume from, or None for a fresh start (also when `--resume` finds none).
    """
    ckpt_path = out / CHECKPOINT
    if not resume and ((out / "config.json").exists() or ckpt_path.exists()):
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if not resume or not ckpt_path.exists():
        return None
    ckpt = load_checkpoint(ckpt_path)
    detail = resume_mismatch(ckpt.get("config", {}), config, resumable, implied)
    if detail:
        raise ConfigError(f"--resume with a different config than the checkpoint in {out} ({detail})")
    return ckpt


def setup_logging(out: Path) -> logging.Handler:
    """Log the run to `out/train.log`; the caller removes the handler with `close_logging`."""
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("synthgrad").addHandler(handler)
    logging.getLogger("synthgrad").setLevel(logging.INFO)
    return handler


def close_logging(handler: logging.Handler) -> None:
    logging.getLogger("synthgrad").removeHandler(handler)
    handler.close()


def show_progress(progress: bool | None) -> bool:
    """Progress bars only on a terminal unless asked for (`progress=True`) or off (`False`)."""
    return sys.stderr.isatty() if progress is None else progress


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats while training, then restore PyTorch's default.

    Tiny gradients turn into denormals and slow CPU training by ~30% after a few epochs (PAPER.md §8); every
    trainer runs under this, so every method of a comparison is timed under the same setting.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
