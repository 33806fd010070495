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
import hashlib
import json
import logging
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from synthgrad.checkpoint import load_checkpoint, save_checkpoint, write_json
from synthgrad.errors import ConfigError, SynthgradError

MANIFEST = "checkpoint.json"
FORMAT = 2  # checkpoint layout: 1 was a single checkpoint.pt (before the run folder was shared by every run)

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
    start_loss: float | None = None  # the task loss of the run's first step ([Note: divergence] in loop.py)


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

        Every rank loads and checks its checkpoint before any goes on, so a damaged file stops every rank with
        the same message, before anything is logged or written.

        Returns this rank's saved state, or None for a fresh start (also when `resume` finds no checkpoint)."""
        verdict = self._verdict(resume) if self.rank == 0 else None
        problem, manifest = self.comm.broadcast_object(verdict, src=0)
        if problem:
            raise ConfigError(problem)
        if manifest is None:
            return None
        state, problem = None, None
        try:
            state = self._load(manifest)
        except SynthgradError as e:
            problem = str(e)
        problems = [p for p in self.comm.all_gather_object(problem) if p]
        if problems:
            raise ConfigError(problems[0])
        self._count = int(manifest["count"])
        self.progress = Progress(**manifest["progress"])
        self._base = self.progress.wall_time_s
        log.info("rank %d: resumed %s at checkpoint %d", self.rank, self.out, self._count)
        return state

    def _load(self, manifest: dict) -> dict:
        """This rank's state from the checkpoint the manifest names, checked to be that checkpoint of this run."""
        path = self.out / manifest["files"][self.rank]
        saved = load_checkpoint(path)
        n = manifest["count"]
        if (saved.get("format"), saved.get("rank"), saved.get("count")) != (FORMAT, self.rank, n) or not isinstance(
            saved.get("state"), dict
        ):
            what = f"rank {saved.get('rank')!r}, checkpoint {saved.get('count')!r}, format {saved.get('format')!r}"
            raise ConfigError(
                f"{path} is not rank {self.rank}'s checkpoint {n} of this run (it holds {what}): put back the run's "
                "own file, or start anew in another --out"
            )
        if saved.get("run", _fingerprint(manifest["config"])) != _fingerprint(manifest["config"]):
            raise ConfigError(
                f"{path} was written by another run than the one {MANIFEST} names: put back the run's own file, or "
                "start anew in another --out"
            )
        return saved["state"]

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
        manifest, problem = _read_manifest(out / MANIFEST)
        if problem:
            return f"{out / MANIFEST} {problem}: the run cannot be resumed; start anew in another --out", None
        files = manifest["files"]
        if len(files) != self.comm.world_size:
            return f"the run in {out} has {len(files)} rank(s), this job {self.comm.world_size}", None
        detail = resume_mismatch(manifest["config"], self.config, self.resumable, self.implied)
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
        saved = {"format": FORMAT, "rank": self.rank, "count": n, "run": _fingerprint(self.config), "state": state}
        save_checkpoint(self.out / name, saved)
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


def _fingerprint(config: Mapping[str, Any]) -> str:
    """What ties a checkpoint file to the manifest written with it: a digest of the config both were written
    under (files from before it was recorded are not checked)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_manifest(path: Path) -> tuple[dict, str | None]:
    """(the manifest at `path`, None) or ({}, what is wrong with it). A manifest names exactly the files
    checkpoint-r{rank}-{count}.pt of its count (so nothing outside the folder), and holds a config and the
    progress."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        return {}, f"is unreadable ({e.strerror})"
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return {}, "is unreadable (not valid JSON: truncated or damaged)"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return {}, f"is not a synthgrad {FORMAT} manifest"
    count, files = manifest.get("count"), manifest.get("files")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1 or not isinstance(files, list) or not files:
        return {}, "is damaged (no checkpoint count or files)"
    expected = [f"checkpoint-r{r}-{count}.pt" for r in range(len(files))]
    if files != expected:
        bad = [f for f, e in zip(files, expected, strict=True) if f != e]
        return {}, f"names files that are not this run's checkpoints ({', '.join(map(repr, bad[:3]))})"
    if not isinstance(manifest.get("config"), dict) or not _valid_progress(manifest.get("progress")):
        return {}, "is damaged (its config or progress is missing or malformed)"
    return manifest, None


def _valid_progress(progress: Any) -> bool:
    """Whether `progress` is a `Progress` as `asdict` wrote it (every key known, each value of its type)."""
    if not isinstance(progress, dict) or not progress.keys() <= _PROGRESS_TYPES.keys():
        return False
    for key, value in progress.items():
        kinds = _PROGRESS_TYPES[key]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            return False
        if isinstance(value, list) and not all(isinstance(row, dict) for row in value):
            return False
    return True


_PROGRESS_TYPES: dict[str, tuple[type, ...]] = {
    "steps": (int,), "samples": (int,), "epoch": (int,), "train_time_s": (int, float), "wall_time_s": (int, float),
    "time_to_target_s": (int, float, type(None)), "finished": (bool,), "history": (list,), "diagnostics": (list,),
    "start_loss": (int, float, type(None)),
}  # fmt: skip


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
