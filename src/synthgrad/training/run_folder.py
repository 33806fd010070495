"""A run's folder: its config, log, metrics, checkpoints and summary; the one place any run is resumed from.

Every training run, feed-forward or recurrent, in one process or in K, keeps the same folder:

    config.json        the resolved config (written once the data has loaded, so a failed start leaves nothing)
    train.log          the log
    metrics.jsonl      a row per evaluation (feed-forward) or per `log_every` samples (recurrent)
    diagnostics.jsonl  feed-forward: synthetic vs true gradient every `diagnose_every` steps
    checkpoint.json    the manifest: the last checkpoint every rank has written, and the run's progress
    checkpoint-r{rank}-{n}.pt   rank `rank`'s state at checkpoint n (written atomically, loaded weights-only)
    summary.json       the result, when the run has finished

A folder holds one run. Starting a run in a folder that holds another is an error (nothing is silently
overwritten); `--resume` continues it, and refuses if the run was started with another config, except for the
fields the caller declares resumable (the budget, where the data and the output live). A manifest is written
only after every rank's file is complete, and names files inside the folder only, so a kill at any moment leaves
the last complete checkpoint in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from synthgrad.checkpoint import load_checkpoint, save_checkpoint, write_json
from synthgrad.errors import ConfigError

MANIFEST = "checkpoint.json"
FORMAT = 2  # checkpoint layout: 1 was a single checkpoint.pt (before the run folder was shared by every run)
_STATE_FILE = re.compile(r"checkpoint-r(\d+)-(\d+)\.pt")

log = logging.getLogger("synthgrad")


class Collective(Protocol):
    """What a run folder and the training loop need from the other ranks of a job."""

    rank: int
    world_size: int

    def barrier(self) -> None: ...

    def broadcast_object(self, obj: object, src: int = 0) -> object: ...

    def all_gather_object(self, obj: object) -> list: ...

    def gather_object(self, obj: object, dst: int = 0) -> list | None: ...

    def all_reduce(self, values: list[float], op: str) -> list[float]:
        """Element-wise "sum" or "max" over ranks."""
        ...


class Solo:
    """The collective of a job of one process."""

    rank, world_size = 0, 1

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        return obj

    def all_gather_object(self, obj: object) -> list:
        return [obj]

    def gather_object(self, obj: object, dst: int = 0) -> list | None:
        return [obj]

    def all_reduce(self, values: list[float], op: str) -> list[float]:
        return list(values)


@dataclass
class Progress:
    """The counters and rows a checkpoint restores."""

    steps: int = 0  # loop iterations: batches (feed-forward), sequence batches, chunks or episodes (recurrent)
    samples: int = 0  # examples, or sequences / characters / digits read (recurrent)
    epoch: int = 0  # epochs completed (feed-forward)
    train_time_s: float = 0.0  # training only (samples/s, time to target)
    wall_time_s: float = 0.0  # everything: training, evaluation, checkpoints; summed over resumptions
    time_to_target_s: float | None = None  # training seconds until the target was first reached
    finished: bool = False  # stopped before its budget (early stopping)
    history: list[dict] = field(default_factory=list)  # metric rows, also in metrics.jsonl
    diagnostics: list[dict] = field(default_factory=list)  # diagnostics rows, also in diagnostics.jsonl


def resume_mismatch(
    saved: Mapping[str, Any], now: Mapping[str, Any], resumable: Collection[str], implied: Mapping[str, Any] | None
) -> str | None:
    """'key: old -> new, ...' for the fields that differ and may not, or None. `implied` gives, for a field added
    to a config after some runs were written, the value those runs ran with."""
    implied = implied or {}
    old = {k: saved[k] if k in saved else implied.get(k) for k in now}
    differ = sorted(k for k in now if k not in resumable and old[k] != now[k])
    return ", ".join(f"{k}: {old[k]!r} -> {now[k]!r}" for k in differ) or None


class RunFolder:
    """The folder of one run, as seen by one rank of it.

    Args:
        out: the folder.
        config: the run's config as plain values (compared on resume, written to config.json).
        resumable: config keys that may differ on resume.
        implied: see `resume_mismatch`.
        collective: the job's other ranks (default: a job of one process).
    """

    def __init__(
        self,
        out: str | Path,
        config: Mapping[str, Any],
        *,
        resumable: Collection[str] = (),
        implied: Mapping[str, Any] | None = None,
        collective: Collective | None = None,
    ) -> None:
        self.out, self.config = Path(out), dict(config)
        self.resumable, self.implied = frozenset(resumable), implied
        self.comm = collective or Solo()
        self.rank = self.comm.rank
        self.progress = Progress()
        self._count = 0  # checkpoints written (or restored)
        self._base, self._t0 = 0.0, time.perf_counter()
        self._handler: logging.Handler | None = None

    # ------------------------------------------------------------------ opening
    def open(self, resume: bool) -> dict | None:
        """Check the folder and, with `resume`, load this rank's state and the progress. Creates nothing.

        Returns this rank's saved state, or None for a fresh start (also when `resume` finds no checkpoint)."""
        verdict = self._verdict(resume) if self.rank == 0 else None
        problem, manifest = self.comm.broadcast_object(verdict, src=0)
        if problem:
            raise ConfigError(problem)
        if manifest is None:
            return None
        self._count = int(manifest["count"])
        self.progress = Progress(**manifest["progress"])
        self._base = self.progress.wall_time_s
        state = load_checkpoint(self.out / manifest["files"][self.rank])
        log.info("rank %d: resumed %s at checkpoint %d", self.rank, self.out, self._count)
        return state["state"]

    def _verdict(self, resume: bool) -> tuple[str | None, dict | None]:
        """(what is wrong with the folder or None, the manifest to resume from or None), decided by rank 0."""
        out = self.out
        if out.exists() and not out.is_dir():
            return f"--out {out} is a file, not a folder: choose another --out", None
        held = [n for n in ("config.json", MANIFEST, "summary.json", "checkpoint.pt") if (out / n).exists()]
        if held and not resume:
            return f"{out} already holds a run: pass --resume to continue it, or choose another --out", None
        if not resume or not (out / MANIFEST).exists():
            if resume and (out / "checkpoint.pt").exists():
                return f"{out} holds a checkpoint of an older synthgrad (before format {FORMAT}): start anew", None
            return None, None
        try:
            manifest = json.loads((out / MANIFEST).read_text())
            files = manifest["files"]
            bad = [f for f in files if not isinstance(f, str) or not _STATE_FILE.fullmatch(f)]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{out / MANIFEST} is unreadable ({type(e).__name__}); the run cannot be resumed", None
        if manifest.get("format") != FORMAT or bad:
            return f"{out / MANIFEST} is not a synthgrad {FORMAT} manifest (it names {bad or 'another format'})", None
        if len(files) != self.comm.world_size:
            return f"the run in {out} has {len(files)} rank(s), this job {self.comm.world_size}", None
        detail = resume_mismatch(manifest.get("config", {}), self.config, self.resumable, self.implied)
        if detail:
            return f"--resume with a different config than the run in {out} ({detail})", None
        return None, manifest

    def start(self) -> None:
        """Create the folder, write config.json and start the log (call once the data has loaded)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:
                write_json(self.out / "config.json", self.config)
        except OSError as e:
            raise ConfigError(f"cannot write to --out {self.out} ({e.strerror})") from None
        self._handler = logging.FileHandler(self.out / ("train.log" if self.rank == 0 else f"train-r{self.rank}.log"))
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("synthgrad").addHandler(self._handler)
        logging.getLogger("synthgrad").setLevel(logging.INFO)
        self._t0 = time.perf_counter()

    def close(self) -> None:
        if self._handler is not None:
            logging.getLogger("synthgrad").removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    # ------------------------------------------------------------------ during the run
    def elapsed(self) -> float:
        """Wall time of the run so far, including the time before a resumption."""
        return self._base + time.perf_counter() - self._t0

    def record(self, row: Mapping[str, Any]) -> dict:
        """Append a metric row (stamped with steps, samples and wall time) and rewrite metrics.jsonl."""
        p = self.progress
        full = {"step": p.steps, "samples": p.samples, "wall_time_s": self.elapsed(), **row}
        p.history.append(full)
        if self.rank == 0:
            _write_rows(self.out / "metrics.jsonl", p.history)
            scalars = " ".join(f"{k}={_short(v)}" for k, v in full.items() if not isinstance(v, list | dict))
            log.info("%s", scalars)
        return full

    def diagnose(self, rows: list[dict]) -> None:
        """Append diagnostics rows (diagnostics.jsonl)."""
        if rows:
            self.progress.diagnostics.extend(rows)
            if self.rank == 0:
                _write_rows(self.out / "diagnostics.jsonl", self.progress.diagnostics)

    def checkpoint(self, state: dict) -> None:
        """Every rank saves its `state`; once all have, rank 0 names them in the manifest with the progress."""
        self.progress.wall_time_s = self.elapsed()
        n = self._count + 1
        name = f"checkpoint-r{self.rank}-{n}.pt"
        save_checkpoint(self.out / name, {"format": FORMAT, "rank": self.rank, "count": n, "state": state})
        self.comm.barrier()
        if self.rank == 0:
            files = [f"checkpoint-r{r}-{n}.pt" for r in range(self.comm.world_size)]
            manifest = {"format": FORMAT, "count": n, "files": files, "config": self.config,
                        "progress": asdict(self.progress)}  # fmt: skip
            write_json(self.out / MANIFEST, manifest)
        self.comm.barrier()
        (self.out / f"checkpoint-r{self.rank}-{self._count}.pt").unlink(missing_ok=True)
        self._count = n

    def load_state(self, rank: int = 0) -> dict:
        """Rank `rank`'s state at the last checkpoint (for inspection and tests)."""
        manifest = json.loads((self.out / MANIFEST).read_text())
        return load_checkpoint(self.out / manifest["files"][rank])["state"]

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.rank == 0:
            write_json(self.out / "summary.json", dict(summary))


def read_rows(path: Path) -> list[dict]:
    """The rows of a .jsonl file written by a run."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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
