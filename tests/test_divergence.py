"""Divergence stops a run within one step, exit 3, in one line, and leaves a checkpoint of finite values that resumes.

[Note: divergence] in training/loop.py: a NaN or infinite loss, a loss over max(1e3 × the first step's, 100), or a
non-finite value anywhere in the model or optimizer state (batch norm's running statistics included), checked
after every step. A learning rate of inf or NaN is bad input (exit 2), one that explodes is divergence (exit 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import checkpoint_of, run_cli, write_fake_mnist
from synthgrad.config import TrainConfig
from synthgrad.data import load_dataset
from synthgrad.training import ChainJob, build_network, classification
from synthgrad.training.chain_job import state_tensors
from synthgrad.training.loop import DivergenceGuard

SMALL = ["--layers", "3", "--width", "16", "--batch-size", "32", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("div"), n_train=192, n_test=32)


def one_error_line(err: str) -> str:
    """The run's one error line (the metric rows a run logs before it are not errors)."""
    errors = [line for line in err.splitlines() if line.startswith("synthgrad: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("lr", ["inf", "nan", "1e400"])
def test_a_learning_rate_that_is_not_finite_is_bad_input(capfd, tmp_path, data, lr) -> None:
    code, _, err = run_cli(capfd, "train", "--data-dir", data, *SMALL, "--lr", lr, "--out", tmp_path / "run")
    assert code == 2 and "--lr" in one_error_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["backprop", "dni", "cdni"])
def test_an_exploding_learning_rate_stops_within_its_first_steps(capfd, tmp_path, data, method) -> None:
    """`--lr 1e4` trained three epochs to 87 % test error at a loss of 7.6e6 before (issue #21)."""
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", "--data-dir", data, *SMALL, "--method", method, "--lr", "1e4",
                           "--epochs", "3", "--out", out)  # fmt: skip
    line = one_error_line(err)
    assert code == 3 and "training diverged" in line and "smaller --lr" in line, line
    assert "grew to" in line or "is nan" in line or "not finite" in line, line
    step = int(line.split(", step ")[1].split(";")[0])
    assert step <= 3, line
    assert not (out / "summary.json").exists()


def test_a_non_finite_state_stops_the_run_at_that_step_and_the_checkpoint_resumes(
    capfd, tmp_path, data, monkeypatch
) -> None:
    """A running variance of batch norm turns infinite in epoch 2 while the loss stays finite (batch norm trains on
    batch statistics): the run stops at that step, not at the epoch's end; the checkpoint of epoch 1 holds only
    finite values, and resuming it ends where an uninterrupted run does."""
    args = ["train", "--data-dir", data, *SMALL, "--method", "dni", "--epochs", "3"]
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "whole")
    assert code == 0, err

    steps_per_epoch, poison_at = 192 // 32, 192 // 32 + 2  # the 2nd step of epoch 2
    step = ChainJob.step

    def poisoned(self, indices):
        loss = step(self, indices)
        if self.net.steps == poison_at:
            bn = next(m for m in self.net.modules() if isinstance(m, torch.nn.BatchNorm1d))
            bn.running_var[0] = float("inf")
        return loss

    monkeypatch.setattr(ChainJob, "step", poisoned)
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, *args, "--out", out)
    line = one_error_line(err)
    assert code == 3 and f"step {poison_at};" in line and "running_var" in line, line
    manifest, state = checkpoint_of(out)
    assert manifest["progress"]["steps"] == steps_per_epoch  # the checkpoint of epoch 1
    tensors = [t for s in state["job"]["stages"] for t in _tensors(s)]
    assert tensors and all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())

    monkeypatch.setattr(ChainJob, "step", step)
    code, _, err = run_cli(capfd, *args, "--out", out, "--resume")
    assert code == 0, err
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["test_error"] == whole["test_error"] and resumed["train_loss"] == whole["train_loss"]


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def test_the_start_loss_is_kept_in_the_run_so_a_resumed_run_has_the_same_threshold(capfd, tmp_path, data) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", "--data-dir", data, *SMALL, "--epochs", "1", "--out", out)
    assert code == 0, err
    start = checkpoint_of(out)[0]["progress"]["start_loss"]
    assert 1.5 < start < 3.5  # about ln 10: the initial network's loss, before any update


def test_the_guard_watches_every_tensor_the_checkpoint_check_does(data) -> None:
    """The per-step check finds, from the job's attributes, every weight, buffer and optimizer state that
    `check_finite` (the named check before each checkpoint) looks at, also the optimizer states Adam creates late
    (update decoupling: a module may first update after a few steps)."""
    torch.manual_seed(0)
    ds = load_dataset("mnist", data)
    cfg = TrainConfig(layers=3, width=8, update_prob=0.3, method="cdni").validate().resolve()
    net = build_network(cfg, ds.input_shape, ds.num_classes)
    job = ChainJob(net, classification(ds, 192, conditioned=True))
    guard = DivergenceGuard(job)
    for _ in range(6):
        job.step(torch.arange(32))
        assert guard.problem(2.0, 2.3) is None
    optimizers = [o for s in net.stages for o in (s.optimizer, s.interface and s.interface.optimizer) if o]
    wanted = {(t.data_ptr(), t.numel()) for _, t in state_tensors(net, optimizers) if t.is_floating_point()}
    assert {(t.data_ptr(), t.numel()) for t in guard._tensors} == wanted
    with torch.no_grad():
        adam = next(o for o in optimizers if o.state)
        next(iter(adam.state.values()))["exp_avg_sq"].view(-1)[0] = float("nan")
    assert "optimizer" in guard.problem(2.0, 2.3)


@pytest.mark.parametrize(
    ("loss", "start", "stops"),
    [(2.3e3, 2.3, False), (2.4e3, 2.3, True), (99.0, 0.01, False), (101.0, 0.01, True), (float("inf"), 2.3, True)],
)
def test_far_is_a_thousand_times_the_start_with_a_floor_of_100(data, loss, start, stops) -> None:
    class Empty:
        def check_finite(self) -> None:
            return None

    assert (DivergenceGuard(Empty()).problem(loss, start) is not None) == stops


REC = ["train", "--task", "copy", "--method", "dni", "--T", "3", "--hidden-size", "32", "--batch-size", "16",
       "--log-every", "16", "--threads", "1", "--no-progress"]  # fmt: skip


def _finite_checkpoint(out: Path) -> dict:
    """The run's last checkpoint, asserting that every tensor in it is finite."""
    manifest, state = checkpoint_of(out)
    tensors = [t for t in _tensors(state) if t.is_floating_point()]
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    return manifest


@pytest.mark.parametrize("lr", ["1e4", "1e8"])
def test_a_recurrent_run_whose_loss_explodes_stops_within_a_step(capfd, tmp_path, lr) -> None:
    """Copy at `--lr 1e4` ended with exit 0 at a loss of 5e4 (1e8: 6.6e8) before (issue #21): the loss per time
    step is checked against the first update's after every update, like the feed-forward loop's."""
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, *REC, "--max-samples", "800", "--lr", lr, "--out", out)
    line = one_error_line(err)
    assert code == 3 and "training diverged" in line and "smaller --lr" in line, line
    assert "grew to" in line or "is nan" in line or "not finite" in line, line
    assert int(line.split(" at step ")[1].split(",")[0]) <= 3, line  # within its first steps
    assert not (out / "summary.json").exists()
    _finite_checkpoint(out)  # one a row after each step: the steps before the one that diverged


def test_a_non_finite_recurrent_state_stops_the_run_at_that_step_and_the_checkpoint_resumes(
    capfd, tmp_path, monkeypatch
) -> None:
    """A weight of the synthesizer turns infinite at the 3rd update while the loss stays finite (it reads the
    state only at the next chunk): the run stops at that update; the checkpoint of update 2 holds only finite
    values, and resuming it ends where an uninterrupted run does."""
    from synthgrad.recurrent.bptt import TruncatedBPTT

    args = [*REC, "--max-samples", "96", "--seed", "1"]
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "whole")
    assert code == 0, err

    train_sequence, calls = TruncatedBPTT.train_sequence, []

    def poisoned(self, *a, **kw):
        chunks = train_sequence(self, *a, **kw)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(self.synthesizer.parameters()).view(-1)[0] = float("inf")
        return chunks

    monkeypatch.setattr(TruncatedBPTT, "train_sequence", poisoned)
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, *args, "--out", out)
    line = one_error_line(err)
    assert code == 3 and "at step 3, after 32 samples" in line and "synthesizer" in line and "not finite" in line, line
    assert _finite_checkpoint(out)["progress"]["samples"] == 32

    monkeypatch.setattr(TruncatedBPTT, "train_sequence", train_sequence)
    code, _, err = run_cli(capfd, *args, "--out", out, "--resume")
    assert code == 0, err
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in resumed.items() if k != "wall_time_s"} == {
        k: v for k, v in whole.items() if k != "wall_time_s"
    }
