"""Every bad input ends in one line naming the cause, exit code 2, and leaves every existing file as it was.

One table (`CASES`): each command-line option at and beyond its bounds (0, negative, NaN, inf, huge, the wrong
type), each file format truncated, empty, wrong-typed or random (MNIST IDX, CIFAR-10 batches, PTB text, experiment
TOML files, checkpoint .pt files, the run folder's checkpoint.json), an --out that is a file or cannot be written,
and damaged run folders, for `train`, recurrent `train --task`, `parallel` (before its processes start), `demo`
and `reproduce`. Each case runs the CLI in-process on a copy of a small world (fake data, a finished run of each
kind), hashes every file under the test's folder before and after, and asserts: exit 2, stdout empty, stderr
exactly one line `synthgrad: error: ...` holding the case's needles, no traceback, nothing created or changed.

Most cases fail before any data is read; the whole table runs in seconds. The cases that need real processes
(`synthgrad parallel` resuming from a damaged stage checkpoint, end to end) are at the end, marked slow; the same
refusal is checked in-process with two ranks on threads, and the launcher's choice of the one line on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import run_cli, write_fake_mnist
from synthgrad.checkpoint import save_checkpoint
from synthgrad.errors import ConfigError
from synthgrad.parallel.launch import _watch
from synthgrad.training.run_folder import RunFolder
from test_data_cifar import make_fake_cifar

REPO = Path(__file__).resolve().parents[1]
PTB_TEXT = "a _ b c _ d e\n" * 200  # Mikolov's character format: symbols separated by spaces

SMALL = ["--layers", "2", "--width", "8", "--batch-size", "32", "--epochs", "1", "--threads", "1", "--no-progress"]
TRAIN = ["train", "--data-dir", "{w}/mnist", *SMALL, "--out", "{w}/out"]
RESUME = ["train", "--data-dir", "{w}/mnist", *SMALL, "--out", "{w}/run", "--epochs", "2", "--resume"]
CIFAR = ["train", "--dataset", "cifar10", "--data-dir", "{w}/cifar", *SMALL, "--batch-size", "4", "--out", "{w}/out"]
REC = ["train", "--task", "copy", "--method", "dni", "--T", "2", "--hidden-size", "8", "--batch-size", "4",
       "--max-samples", "16", "--log-every", "8", "--threads", "1", "--no-progress", "--seed", "3"]  # fmt: skip
REC_RESUME = [*REC, "--max-samples", "32", "--out", "{w}/rrun", "--resume"]
PTB = ["train", "--task", "ptb-char", "--method", "dni", "--T", "4", "--hidden-size", "8", "--batch-size", "2",
       "--max-samples", "64", "--eval-chars", "64", "--threads", "1", "--no-progress", "--data-dir", "{w}/ptb",
       "--out", "{w}/out"]  # fmt: skip
PAR = ["parallel", "--stages", "2", "--method", "dni", "--data-dir", "{w}/mnist", *SMALL, "--out", "{w}/pout"]


# -- damaging the world ----------------------------------------------------------------------------------------


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        blob = (w / rel).read_bytes()
        (w / rel).write_bytes(blob[: int(len(blob) * keep)])

    return damage


def write(rel: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        (w / rel).write_bytes(data)

    return damage


def noise(rel: str, n: int = 4096) -> Callable[[Path], None]:
    return write(rel, bytes(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)).tolist()))


def edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        manifest = json.loads((w / "run" / "checkpoint.json").read_text())
        manifest = change(manifest) or manifest
        (w / "run" / "checkpoint.json").write_text(json.dumps(manifest))

    return damage


def swap(a: str, b: str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        (w / a).rename(w / "swap.tmp")
        (w / b).rename(w / a)
        (w / "swap.tmp").rename(w / b)

    return damage


def run_file(w: Path, folder: str = "run") -> str:
    """The relative path of the run's (rank 0) checkpoint file named by its manifest."""
    return f"{folder}/" + json.loads((w / folder / "checkpoint.json").read_text())["files"][0]


def damage_checkpoint(how: Callable[[str], Callable[[Path], None]], folder: str = "run") -> Callable[[Path], None]:
    return lambda w: how(run_file(w, folder))(w)


class Hostile:
    """Unpickling this writes a marker file: proof that a loader executed code from the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def hostile_checkpoint(w: Path) -> None:
    torch.save({"format": 2, "rank": 0, "count": 1, "state": {"job": Hostile(str(w.parent / "executed"))}},
               w / run_file(w))  # fmt: skip


def foreign_checkpoint(w: Path) -> None:
    """Rank 0's checkpoint 1 of another run (the recurrent one), in place of this run's."""
    shutil.copy(w / run_file(w, "rrun"), w / run_file(w))


def other_config_checkpoint(w: Path) -> None:
    """A checkpoint of this layout (rank 0, checkpoint 1) written under another config."""
    saved = torch.load(w / run_file(w), weights_only=True)
    save_checkpoint(w / run_file(w), {**saved, "run": "0123456789abcdef"})


def hostile_cifar(w: Path) -> None:
    with open(w / "cifar" / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Hostile(str(w.parent / "executed")), b"labels": [0]}, f, protocol=2)


def cifar_batch(rel: str = "data_batch_1") -> str:
    return f"cifar/cifar-10-batches-py/{rel}"


# -- the table -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    needles: tuple[str, ...] = ()
    damage: Callable[[Path], None] | None = None


def opt(base: list[str], flag: str, value: str, *needles: str, **kw) -> Case:
    name = f"{base[0] if base[0] != 'train' or '--task' not in base else 'rec'}{flag}={value}"[:60]
    return Case(name, [*base, flag, value], needles or (flag,), **kw)


CASES: list[Case] = [
    # ---- feed-forward options at and beyond their bounds
    *[opt(TRAIN, "--layers", v) for v in ("0", "-1", "1001", "abc", "1.5")],
    *[opt(TRAIN, "--width", v) for v in ("0", "-3", "abc", "1000000000")],
    *[opt(TRAIN, "--epochs", v) for v in ("0", "-1", "abc", "2.5")],
    *[opt(TRAIN, "--batch-size", v) for v in ("0", "1", "-2", "abc", "10000000")],
    *[opt(TRAIN, "--lr", v) for v in ("0", "-1", "nan", "inf", "-inf", "1e400", "abc")],
    *[opt(TRAIN, "--synthesizer-lr", v) for v in ("0", "nan", "inf", "abc")],
    *[opt(TRAIN, "--update-prob", v) for v in ("0", "-0.5", "1.5", "nan", "inf", "abc")],
    *[opt(TRAIN, "--fold-every", v) for v in ("-1", "abc")],
    *[opt(TRAIN, "--seed", v) for v in ("-1", "4294967296", "1" + "0" * 30, "abc")],
    *[opt(TRAIN, "--threads", v) for v in ("0", "-1", "1" + "0" * 20, "abc")],
    *[opt(TRAIN, "--diagnose-every", v) for v in ("-1", "abc")],
    *[opt(TRAIN, "--train-limit", v) for v in ("0", "10", "abc")],
    *[opt(TRAIN, "--synthesizer-hidden", v) for v in ("0", "a,b", "-4")],
    opt(TRAIN, "--method", "foo"),
    opt(TRAIN, "--dataset", "svhn"),
    opt(TRAIN, "--model", "rnn"),
    opt(TRAIN, "--synthesizer", "foo"),
    opt(TRAIN, "--unlock", "half"),
    opt(TRAIN, "--device", "tpu"),
    opt(TRAIN, "--device", "cuda:x"),
    Case("train-cnn-1-layer", [*TRAIN, "--model", "cnn", "--layers", "1"], ("--layers",)),
    Case("train-unlock-backprop", [*TRAIN, "--method", "backprop", "--unlock", "full"], ("--unlock", "dni")),
    Case("train-fold-unlock", [*TRAIN, "--unlock", "full", "--fold-every", "2"], ("--fold-every 0",)),
    Case("train-1-layer-dni", [*TRAIN, "--layers", "1"], ("--layers >= 2",)),
    Case("train-recurrent-option", [*TRAIN, "--T", "3"], ("--T", "--task")),
    Case("train-no-command", ["fly"], ("'fly'",)),
    # ---- experiment files
    Case("config-missing", [*TRAIN, "--config", "{w}/nope.toml"], ("nope.toml",)),
    Case("config-folder", [*TRAIN, "--config", "{w}/mnist"], ("mnist",)),
    Case("config-random", [*TRAIN, "--config", "{w}/bad.toml"], ("bad.toml", "TOML"), noise("bad.toml", 300)),
    Case("config-truncated", [*TRAIN, "--config", "{w}/bad.toml"], ("bad.toml", "TOML"), write("bad.toml", "lr = ")),
    Case("config-wrong-type", [*TRAIN, "--config", "{w}/bad.toml"], ("seed", "'3'"), write("bad.toml", 'seed = "3"')),
    Case("config-unknown-key", [*TRAIN, "--config", "{w}/bad.toml"], ("foo",), write("bad.toml", "foo = 1")),
    Case("config-nan", [*TRAIN, "--config", "{w}/bad.toml"], ("--lr", "nan"), write("bad.toml", "lr = nan")),
    Case(
        "config-inf",
        [*TRAIN, "--config", "{w}/bad.toml"],
        ("--synthesizer-lr", "inf"),
        write("bad.toml", "synthesizer_lr = inf"),
    ),
    Case(
        "config-hidden-0",
        [*TRAIN, "--config", "{w}/bad.toml"],
        ("--synthesizer-hidden",),
        write("bad.toml", "synthesizer_hidden = [0]"),
    ),
    Case("config-list", [*TRAIN, "--config", "{w}/bad.toml"], ("fold_every",), write("bad.toml", "fold_every = [3]")),
    Case("config-shipped-typo", [*TRAIN, "--config", "mnist_fcn4_dnii"], ("mnist_fcn4_dnii",)),
    # ---- MNIST files
    Case("data-missing", [*TRAIN, "--data-dir", "{w}/nowhere"], ("nowhere", "--download")),
    Case("data-is-a-file", [*TRAIN, "--data-dir", "{w}/mnist/train-labels-idx1-ubyte.gz"], ("--download",)),
    Case(
        "data-empty-dir",
        [*TRAIN, "--data-dir", "{w}/empty"],
        ("missing", "--download"),
        lambda w: (w / "empty").mkdir(),
    ),
    Case("mnist-gz-truncated", TRAIN, ("train-images",), truncate("mnist/train-images-idx3-ubyte.gz")),
    Case("mnist-gz-empty", TRAIN, ("t10k-labels",), write("mnist/t10k-labels-idx1-ubyte.gz", b"")),
    Case("mnist-gz-random", TRAIN, ("t10k-images",), noise("mnist/t10k-images-idx3-ubyte.gz")),
    Case(
        "mnist-raw-truncated",
        [*TRAIN, "--data-dir", "{w}/raw"],
        ("train-images",),
        truncate("raw/train-images-idx3-ubyte", 0.7),
    ),
    Case(
        "mnist-raw-empty",
        [*TRAIN, "--data-dir", "{w}/raw"],
        ("train-labels",),
        write("raw/train-labels-idx1-ubyte", b""),
    ),
    Case("mnist-raw-random", [*TRAIN, "--data-dir", "{w}/raw"], ("t10k-images",), noise("raw/t10k-images-idx3-ubyte")),
    Case(
        "mnist-raw-text",
        [*TRAIN, "--data-dir", "{w}/raw"],
        ("t10k-labels",),
        write("raw/t10k-labels-idx1-ubyte", "0,1,2,3\n"),
    ),
    Case(
        "mnist-swapped",
        [*TRAIN, "--data-dir", "{w}/raw"],
        ("swapped",),
        swap("raw/train-images-idx3-ubyte", "raw/train-labels-idx1-ubyte"),
    ),
    Case(
        "mnist-label-out-of-range",
        [*TRAIN, "--data-dir", "{w}/raw"],
        ("label 200",),
        write("raw/t10k-labels-idx1-ubyte", bytes([0, 0, 8, 1, 0, 0, 0, 32, *[1] * 31, 200])),
    ),
    Case(
        "mnist-count-mismatch",
        [*TRAIN, "--data-dir", "{w}/raw"],
        ("labels",),
        write("raw/t10k-labels-idx1-ubyte", bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2])),
    ),
    # ---- CIFAR-10 batches
    Case("cifar-missing-batch", CIFAR, ("data_batch_3",), lambda w: (w / cifar_batch("data_batch_3")).unlink()),
    Case("cifar-truncated", CIFAR, ("data_batch_1",), truncate(cifar_batch())),
    Case("cifar-empty", CIFAR, ("test_batch",), write(cifar_batch("test_batch"), b"")),
    Case("cifar-random", CIFAR, ("data_batch_2",), noise(cifar_batch("data_batch_2"))),
    Case("cifar-wrong-type", CIFAR, ("data_batch_4",), write(cifar_batch("data_batch_4"), pickle.dumps([1, 2, 3]))),
    Case("cifar-hostile", CIFAR, ("data_batch_1",), hostile_cifar),
    # ---- --out
    Case("out-is-a-file", [*TRAIN, "--out", "{w}/file"], ("is a file", "another --out"), write("file", "x")),
    Case("out-under-a-file", [*TRAIN, "--out", "{w}/file/sub"], ("--out", "file/sub"), write("file", "x")),
    Case("out-unwritable", [*TRAIN, "--out", "/proc/synthgrad-out"], ("cannot write", "/proc/synthgrad-out")),
    Case("out-holds-a-run", [*TRAIN, "--out", "{w}/run"], ("already holds a run", "--resume")),
    # ---- resuming a damaged or different run
    Case("resume-other-config", [*RESUME, "--method", "cdni"], ("method: 'dni' -> 'cdni'",)),
    Case("resume-manifest-truncated", RESUME, ("checkpoint.json", "another --out"), truncate("run/checkpoint.json")),
    Case("resume-manifest-empty", RESUME, ("checkpoint.json",), write("run/checkpoint.json", "")),
    Case("resume-manifest-random", RESUME, ("checkpoint.json",), noise("run/checkpoint.json", 500)),
    Case("resume-manifest-list", RESUME, ("checkpoint.json",), write("run/checkpoint.json", "[1, 2]")),
    Case("resume-manifest-format", RESUME, ("not a synthgrad",), edit_manifest(lambda m: m.update(format=9))),
    Case(
        "resume-manifest-outside",
        RESUME,
        ("../outside.pt",),
        edit_manifest(lambda m: m.update(files=["../outside.pt"])),
    ),
    Case(
        "resume-manifest-absolute", RESUME, ("/etc/passwd",), edit_manifest(lambda m: m.update(files=["/etc/passwd"]))
    ),
    Case("resume-manifest-count", RESUME, ("checkpoint-r0-1.pt",), edit_manifest(lambda m: m.update(count=7))),
    Case("resume-manifest-count-type", RESUME, ("damaged",), edit_manifest(lambda m: m.update(count="1"))),
    Case("resume-manifest-progress", RESUME, ("damaged",), edit_manifest(lambda m: m["progress"].update(history="x"))),
    Case("resume-manifest-progress-key", RESUME, ("damaged",), edit_manifest(lambda m: m["progress"].update(extra=1))),
    Case("resume-manifest-no-config", RESUME, ("damaged",), edit_manifest(lambda m: m.pop("config") and None)),
    Case(
        "resume-manifest-two-ranks",
        RESUME,
        ("2 rank(s)",),
        edit_manifest(lambda m: m.update(files=["checkpoint-r0-1.pt", "checkpoint-r1-1.pt"])),
    ),
    Case("resume-checkpoint-truncated", RESUME, ("truncated", "intact copy"), damage_checkpoint(truncate)),
    Case("resume-checkpoint-empty", RESUME, ("empty",), damage_checkpoint(lambda r: write(r, b""))),
    Case("resume-checkpoint-random", RESUME, ("not a checkpoint synthgrad wrote",), damage_checkpoint(noise)),
    Case("resume-checkpoint-text", RESUME, ("checkpoint-r0-1.pt",), damage_checkpoint(lambda r: write(r, "hello"))),
    Case("resume-checkpoint-hostile", RESUME, ("was not loaded",), hostile_checkpoint),
    Case("resume-checkpoint-foreign", RESUME, ("not rank 0's checkpoint 1",), foreign_checkpoint),
    Case("resume-checkpoint-other-config", RESUME, ("another run",), other_config_checkpoint),
    Case("resume-checkpoint-missing", RESUME, ("no checkpoint at",), lambda w: (w / run_file(w)).unlink()),
    Case(
        "resume-checkpoint-folder",
        RESUME,
        ("folder",),
        lambda w: ((w / run_file(w)).unlink(), (w / run_file(w)).mkdir()),
    ),
    Case(
        "resume-older-format",
        [*RESUME[:-3], "--out", "{w}/old", "--resume"],
        ("older synthgrad",),
        write("old/checkpoint.pt", b"PK"),
    ),
    # ---- recurrent training (through the CLI; the checks live in synthgrad.recurrent)
    *[opt([*REC, "--out", "{w}/out"], "--T", v) for v in ("0", "-1", "abc")],
    *[opt([*REC, "--out", "{w}/out"], "--hidden-size", v) for v in ("0", "-8")],
    *[opt([*REC, "--out", "{w}/out"], "--max-samples", v) for v in ("0", "-5", "abc")],
    *[opt([*REC, "--out", "{w}/out"], "--max-minutes", v) for v in ("0", "-1", "nan", "inf")],
    *[opt([*REC, "--out", "{w}/out"], "--discount", v) for v in ("0", "2", "nan", "-inf")],
    *[opt([*REC, "--out", "{w}/out", "--method", "dni-aux"], "--aux-weight", v) for v in ("-1", "nan")],
    *[opt([*REC, "--out", "{w}/out"], "--trace-decay", v) for v in ("-0.5", "1.5", "inf")],
    *[opt([*REC, "--out", "{w}/out"], "--log-every", v) for v in ("0", "-1")],
    *[opt([*REC, "--out", "{w}/out"], "--forget-bias", v) for v in ("nan", "inf")],
    *[opt([*REC, "--out", "{w}/out"], "--curriculum-threshold", v) for v in ("-1", "nan")],
    opt([*REC, "--out", "{w}/out"], "--curriculum-window", "0"),
    opt([*REC, "--out", "{w}/out"], "--seed", "1" + "0" * 25),
    opt([*REC, "--out", "{w}/out"], "--lr", "0"),
    opt([*REC, "--out", "{w}/out"], "--batch-size", "0"),
    opt([*REC, "--out", "{w}/out", "--task", "repeat-copy"], "--max-repeats", "0"),
    opt([*PTB[:-2], "--out", "{w}/out"], "--patience", "0"),
    opt([*PTB[:-2], "--out", "{w}/out"], "--eval-chars", "0"),
    opt([*REC, "--out", "{w}/out", "--task", "multinet", "--data-dir", "{w}/mnist"], "--target-accuracy", "2"),
    opt([*REC, "--out", "{w}/out", "--task", "multinet", "--data-dir", "{w}/mnist"], "--accuracy-window", "0"),
    Case("rec-unknown-task", [*REC, "--out", "{w}/out", "--task", "sorting"], ("'sorting'",)),
    Case("rec-feedforward-method", [*REC, "--out", "{w}/out", "--method", "cdni"], ("cdni",)),
    Case("rec-feedforward-option", [*REC, "--out", "{w}/out", "--layers", "3"], ("--layers",)),
    Case(
        "rec-config-random",
        [*REC, "--out", "{w}/out", "--config", "{w}/bad.toml"],
        ("bad.toml",),
        noise("bad.toml", 300),
    ),
    Case("rec-out-is-a-file", [*REC, "--out", "{w}/file"], ("is a file",), write("file", "x")),
    Case("rec-resume-other-config", [*REC_RESUME, "--discount", "0.5"], ("discount",)),
    Case("rec-resume-manifest-truncated", REC_RESUME, ("checkpoint.json",), truncate("rrun/checkpoint.json")),
    Case("rec-resume-checkpoint-truncated", REC_RESUME, ("truncated",), damage_checkpoint(truncate, "rrun")),
    Case("rec-resume-checkpoint-random", REC_RESUME, ("not a checkpoint",), damage_checkpoint(noise, "rrun")),
    # ---- Penn Treebank text (synthgrad train --task ptb-char)
    Case("ptb-missing", [*PTB, "--data-dir", "{w}/nowhere"], ("ptb.char.train.txt", "not found")),
    Case("ptb-random", PTB, ("ptb.char.train.txt", "not a text file"), noise("ptb/ptb.char.train.txt")),
    Case("ptb-empty", PTB, ("ptb.char.valid.txt", "no characters"), write("ptb/ptb.char.valid.txt", "")),
    Case("ptb-words", PTB, ("ptb.char.test.txt", "single character"), write("ptb/ptb.char.test.txt", "the cat sat\n")),
    Case(
        "ptb-truncated-utf8",
        PTB,
        ("ptb.char.train.txt", "not a text file"),
        write("ptb/ptb.char.train.txt", PTB_TEXT.encode() + "é".encode()[:1]),
    ),
    Case("ptb-unknown-symbol", PTB, ("ptb.char.valid.txt", "not in train"), write("ptb/ptb.char.valid.txt", "z q\n")),
    Case(
        "ptb-folder",
        PTB,
        ("ptb.char.test.txt",),
        lambda w: ((w / "ptb/ptb.char.test.txt").unlink(), (w / "ptb/ptb.char.test.txt").mkdir()),
    ),
    # ---- synthgrad parallel, before any process starts
    *[opt(PAR, "--timeout", v) for v in ("0", "-1", "nan", "inf", "abc")],
    *[opt(PAR, "--stages", v) for v in ("0", "1", "9", "abc")],
    opt(PAR, "--max-staleness", "-1"),
    *[opt(PAR, "--master-port", v) for v in ("0", "70000")],
    opt([*PAR, "--method", "backprop"], "--microbatches", "0", "--microbatches"),
    *[opt(PAR, "--target-accuracy", v) for v in ("101", "-5", "nan")],
    opt(PAR, "--eval-every", "-1"),
    opt(PAR, "--schedule", "gpipe", "--method backprop"),
    opt(PAR, "--model", "cnn", "--model fcn"),
    opt(PAR, "--lr", "inf"),
    # ---- demo and reproduce
    Case("demo-epochs-0", ["demo", "--epochs", "0", "--out", "{w}/out"], ("--epochs",)),
    Case("demo-layers-0", ["demo", "--layers", "0", "--out", "{w}/out"], ("--layers",)),
    Case("demo-layers-1", ["demo", "--layers", "1", "--data-dir", "{w}/mnist", "--out", "{w}/out"], ("--layers >= 2",)),
    Case("demo-no-data", ["demo", "--data-dir", "{w}/nowhere", "--out", "{w}/out"], ("nowhere", "--download")),
    Case("reproduce-epochs-0", ["reproduce", "feedforward", "--epochs", "0", "--out", "{w}/out"], ("--epochs",)),
    Case("reproduce-seeds-0", ["reproduce", "feedforward", "--seeds", "0", "--out", "{w}/out"], ("--seeds",)),
    Case("reproduce-groups", ["reproduce", "feedforward", "--groups", "nope", "--out", "{w}/out"], ("nope", "fcn")),
    *[
        Case(
            f"reproduce-minutes-{v}",
            ["reproduce", "recurrent", "--minutes-per-run", v, "--out", "{w}/out"],
            ("--minutes-per-run",),
        )
        for v in ("0", "nan", "inf")
    ],
    Case("reproduce-suite", ["reproduce", "convex", "--out", "{w}/out"], ("'convex'",)),
    # ---- values only the data or the machine bound, and a file's value the command line's check does not see
    Case(
        "rec-config-seed-huge",
        [*REC[:-2], "--out", "{w}/out", "--config", "{w}/seed.toml"],  # REC without its --seed: the file's counts
        ("--seed",),
        write("seed.toml", 'task = "copy"\nseed = 99999999999999999999\n'),
    ),
    Case("train-batch-larger-than-the-data", [*TRAIN, "--batch-size", "1000"], ("--batch-size", "128")),
    Case("parallel-batch-larger-than-the-data", [*PAR, "--batch-size", "1000"], ("--batch-size", "128")),
    Case("rec-hidden-size-huge", [*REC, "--out", "{w}/out", "--hidden-size", "99999999999"], ("memory",)),
    Case("ptb-batch-larger-than-the-stream", [*PTB, "--batch-size", "100000"], ("too short", "--batch-size")),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake data in every format, and a finished run of each kind to resume (written once, copied per case)."""
    import contextlib
    import io

    from synthgrad.cli import main

    w = tmp_path_factory.mktemp("world")
    write_fake_mnist(w / "mnist", n_train=128, n_test=32)
    write_fake_mnist(w / "raw", n_train=128, n_test=32, gzip=False)
    make_fake_cifar(w / "cifar" / "cifar-10-batches-py", sizes=(8, 8, 8, 8, 8, 4))
    for split in ("train", "valid", "test"):
        write(f"ptb/ptb.char.{split}.txt", PTB_TEXT)(w)
    with contextlib.redirect_stdout(io.StringIO()):
        runs = [[*TRAIN[:-1], "{w}/run"], [*REC, "--out", "{w}/rrun"]]
        assert all(main([a.replace("{w}", str(w)) for a in argv]) == 0 for argv in runs)
    return w


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under `root`: relative path -> content hash ('dir' for a folder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_case(case: Case, capfd, tmp_path: Path, world: Path) -> None:
    w = tmp_path / "w"
    shutil.copytree(world, w)
    if case.damage is not None:
        case.damage(w)
    before = tree(tmp_path)
    code, out, err = run_cli(capfd, *[a.replace("{w}", str(w)) for a in case.argv])
    lines = err.splitlines()
    assert code == 2, f"exit {code}:\n{err[-3000:]}"
    assert "Traceback" not in err and len(lines) == 1, f"expected one line on stderr, got:\n{err[-3000:]}"
    assert lines[0].startswith("synthgrad: error: "), lines[0]
    assert out == "", out
    for needle in case.needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "weights_only" not in lines[0] and "\x1b" not in lines[0], lines[0]
    assert tree(tmp_path) == before, "a file was created or changed"
    assert not (tmp_path / "executed").exists(), "a hostile pickle ran"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, capfd, tmp_path, world) -> None:
    check_case(case, capfd, tmp_path, world)


def test_the_table_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_a_failed_recurrent_start_leaves_the_out_folder_free(capfd, tmp_path, world) -> None:
    """Issue #21: after bad data, the same --out with good data is not refused as "already holds a run"."""
    w = tmp_path / "w"
    shutil.copytree(world, w)
    noise("bad/ptb.char.train.txt")(w)
    argv = [a.replace("{w}", str(w)) for a in PTB]
    code, _, err = run_cli(capfd, *argv[:-4], "--data-dir", w / "bad", "--out", w / "out")
    assert code == 2 and "not a text file" in err, err
    code, _, err = run_cli(capfd, *argv)
    assert code == 0, err


# -- synthgrad parallel: a damaged stage checkpoint stops every stage, and the job prints one line --------------


class _Pair:
    """What two ranks of a job share, for a collective of two threads."""

    def __init__(self) -> None:
        self.barrier, self.slots = threading.Barrier(2, timeout=30), [None, None]


class _ThreadComm:
    """`Collective` of rank `rank` of a two-rank job whose ranks are threads of this process."""

    world_size = 2

    def __init__(self, pair: _Pair, rank: int) -> None:
        self.pair, self.rank = pair, rank

    def barrier(self) -> None:
        self.pair.barrier.wait()

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        return self.all_gather_object(obj)[src]

    def all_gather_object(self, obj: object) -> list:
        self.pair.slots[self.rank] = obj
        self.barrier()
        out = list(self.pair.slots)
        self.barrier()
        return out


def _both_ranks(work: Callable[[int, _ThreadComm], object]) -> list[object]:
    """`work(rank, comm)` on two threads as the two ranks of a job; each rank's result or exception."""
    pair, results = _Pair(), [None, None]

    def run(rank: int) -> None:
        try:
            results[rank] = work(rank, _ThreadComm(pair, rank))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[rank] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


CONFIG = {"method": "dni", "epochs": 1, "out": "x"}


def _two_rank_folder(out: Path) -> None:
    def write(rank: int, comm: _ThreadComm) -> None:
        run = RunFolder(out, CONFIG, resumable={"epochs", "out"}, collective=comm)
        run.start()
        run.checkpoint({"job": {"rank": rank, "w": torch.full((3,), float(rank))}})
        run.close()

    assert _both_ranks(write) == [None, None]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (truncate("checkpoint-r1-1.pt"), "checkpoint-r1-1.pt is truncated"),
        (noise("checkpoint-r0-1.pt"), "checkpoint-r0-1.pt is not a checkpoint synthgrad wrote"),
        (lambda d: shutil.copy(d / "checkpoint-r0-1.pt", d / "checkpoint-r1-1.pt"), "not rank 1's checkpoint 1"),
        (truncate("checkpoint.json"), "checkpoint.json is unreadable"),
    ],
    ids=["stage-1-truncated", "stage-0-random", "stage-1-foreign", "manifest-truncated"],
)
def test_every_rank_of_a_job_refuses_a_damaged_folder_with_the_same_line(tmp_path, damage, needle) -> None:
    """Every rank loads and checks its file before any goes on: a file damaged on one rank stops all of them with
    its message (the launcher then prints it once), instead of one stage failing and the others losing it."""
    out = tmp_path / "run"
    _two_rank_folder(out)
    damage(out)
    errors = _both_ranks(lambda rank, comm: RunFolder(out, {**CONFIG, "epochs": 2}, resumable={"epochs", "out"},
                                                      collective=comm).open(resume=True))  # fmt: skip
    assert all(isinstance(e, ConfigError) for e in errors), errors
    assert str(errors[0]) == str(errors[1]) and needle in str(errors[0]), errors


def test_an_intact_two_rank_folder_resumes_each_rank_s_own_state(tmp_path) -> None:
    out = tmp_path / "run"
    _two_rank_folder(out)
    states = _both_ranks(lambda rank, comm: RunFolder(out, {**CONFIG, "epochs": 2}, resumable={"epochs", "out"},
                                                      collective=comm).open(resume=True))  # fmt: skip
    assert [s["job"]["rank"] for s in states] == [0, 1]


class _Ended:
    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code

    def kill(self) -> None:
        pass


@pytest.mark.parametrize(
    ("codes", "said", "code", "line"),
    [
        # the stage with the bad file (2) is the cause; the one that lost it (1) is not, whichever rank it is
        (
            (1, 2),
            ("synthgrad: error: stage 0: lost stage 1 (RuntimeError: …)", "synthgrad: error: bad file"),
            2,
            "synthgrad: error: bad file",
        ),
        (
            (2, 2),
            ("synthgrad: error: bad manifest", "synthgrad: error: bad manifest"),
            2,
            "synthgrad: error: bad manifest",
        ),
        (
            (3, 1),
            ("synthgrad: error: training diverged: …", "synthgrad: error: stage 1: lost stage 0 (…)"),
            3,
            "synthgrad: error: training diverged: …",
        ),
        ((1, -9), ("synthgrad: error: stage 0: lost stage 1 (…)", ""), 1, "stage 1 was killed by SIGKILL"),
        ((0, 1), ("", ""), 1, "stage 1 exited with code 1"),  # a crash with a traceback: no line of its own
    ],
    ids=["cause-on-rank-1", "both-refuse", "divergence", "killed", "crashed"],
)
def test_the_launcher_prints_the_cause_s_line_once(capsys, tmp_path, codes, said, code, line) -> None:
    files = []
    for rank, text in enumerate(said):
        files.append(tmp_path / f"rank{rank}.err")
        files[-1].write_text(text + "\n" if text else "")
    assert _watch([_Ended(c) for c in codes], files) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and line in err, err


ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def parallel_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parallel run folder (2 stages) resumable by `PAR --epochs 2 --resume`, written by a real run."""
    w = tmp_path_factory.mktemp("pworld")
    argv = [a.replace("{w}", str(world)) for a in PAR[:-1]] + [str(w / "pout")]
    r = subprocess.run([sys.executable, "-m", "synthgrad.cli", *argv], env=ENV, capture_output=True, text=True,
                       timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return w / "pout"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (truncate("checkpoint-r1-1.pt"), ("checkpoint-r1-1.pt", "truncated")),
        (lambda d: shutil.copy(d / "checkpoint-r0-1.pt", d / "checkpoint-r1-1.pt"), ("checkpoint-r1-1.pt", "rank 1's")),
        (truncate("checkpoint.json"), ("checkpoint.json",)),
    ],
    ids=["stage-1-truncated", "stage-1-foreign", "manifest-truncated"],
)
def test_parallel_resume_from_a_damaged_folder_is_one_line(parallel_run, world, tmp_path, damage, needles) -> None:
    """The same, end to end: two real stage processes under the local launcher."""
    out = tmp_path / "pout"
    shutil.copytree(parallel_run, out)
    damage(out)
    before = tree(tmp_path)
    argv = [a.replace("{w}", str(world)) for a in PAR[:-1]] + [str(out), "--epochs", "2", "--resume"]
    r = subprocess.run([sys.executable, "-m", "synthgrad.cli", *argv], env=ENV, capture_output=True, text=True,
                       timeout=180)  # fmt: skip
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("synthgrad: error: ") and all(n in lines[0] for n in needles), lines[0]
    assert tree(tmp_path) == before
