"""Every feed-forward method resumes exactly: interrupted mid-epoch after a checkpoint, then `--resume`, it ends with
the summary, metric rows and final state (weights, optimizers, synthesizers, generators) of an uninterrupted run.

DNI with folding is checked with a real SIGKILL in test_resume.py, the parallel runtime in test_parallel.py (DNI and
cDNI), Copy and PTB in test_recurrent_train.py; `benchmarks/resume_check.py` kills each at 10 random points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import checkpoint_of, run_cli, write_fake_mnist
from synthgrad.training import ChainJob

SMALL = ["--layers", "3", "--width", "16", "--batch-size", "32", "--epochs", "3", "--threads", "1", "--no-progress"]
STEPS_PER_EPOCH = 192 // 32
TIMING = ("time", "samples_per_s", "peak_rss", "per_stage", "threads")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("resume"), n_train=192, n_test=32)


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def same_state(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize(
    "method",
    [
        ["--method", "backprop"],
        ["--method", "cdni"],
        ["--method", "dni", "--update-prob", "0.5"],  # update decoupling, with folding
        ["--method", "cdni", "--unlock", "full"],  # complete unlock
    ],
    ids=["backprop", "cdni", "dni-update-p0.5", "cdni-unlock"],
)
def test_an_interrupted_run_resumes_to_the_uninterrupted_numbers(capfd, tmp_path, data, monkeypatch, method):
    args = ["train", "--data-dir", data, *SMALL, *method]
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "whole")
    assert code == 0, err

    stop_at, step = STEPS_PER_EPOCH + 3, ChainJob.step  # mid-epoch 2, after the checkpoint of epoch 1

    def interrupted(self, indices):
        if self.net.steps == stop_at:
            raise KeyboardInterrupt
        return step(self, indices)

    monkeypatch.setattr(ChainJob, "step", interrupted)
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, *args, "--out", out)
    assert code == 130, err
    assert checkpoint_of(out)[0]["progress"]["epoch"] == 1 and not (out / "summary.json").exists()
    monkeypatch.setattr(ChainJob, "step", step)
    code, _, err = run_cli(capfd, *args, "--out", out, "--resume")
    assert code == 0, err

    for name in ("summary.json",):
        assert without_timing(json.loads((out / name).read_text())) == without_timing(
            json.loads((tmp_path / "whole" / name).read_text())
        )
    rows = [without_timing(json.loads(r)) for r in (out / "metrics.jsonl").read_text().splitlines()]
    want = [without_timing(json.loads(r)) for r in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert rows == want
    assert same_state(checkpoint_of(out)[1], checkpoint_of(tmp_path / "whole")[1])
