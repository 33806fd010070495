"""The recurrent trainer through `synthgrad train --task ...`: outputs, curriculum, PTB on the real data, exact
resume after an interruption, one-line user errors; and the two-network system's update schedule.

Tiny sizes on one thread (conftest): the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import shared_data_dir
from helpers import run_cli, write_fake_mnist
from synthgrad.recurrent.budget import Budget
from synthgrad.training.run_folder import RunFolder

TINY = ["--hidden-size", "16", "--batch-size", "8", "--threads", "1", "--no-progress", "--seed", "3"]
COMMON_KEYS = {"task", "method", "T", "samples", "wall_time_s", "hidden_size", "max_samples"}
TASK_KEYS = {
    "copy": {"max_length", "paper_score", "final_length"},
    "repeat-copy": {"max_length", "paper_score", "final_length"},
    "ptb-char": {"test_bpc", "valid_bpc", "stopped_early"},
    "multinet": {"steps_to_target", "target_accuracy", "test_accuracy", "a_updates"},
}


def ptb_dir() -> Path:
    path = shared_data_dir()
    if path is None or not (path / "ptb" / "ptb.char.train.txt").is_file():
        pytest.skip("Penn Treebank not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=50)


def task_args(task: str, fake_mnist: Path) -> list[str]:
    """A few seconds' budget per task, with rows (and checkpoints) every few updates."""
    if task == "ptb-char":
        return ["--data-dir", ptb_dir(), "--max-samples", "6000", "--log-every", "1500", "--eval-chars", "4000"]
    if task == "multinet":
        return ["--data-dir", fake_mnist, "--max-samples", "1600", "--log-every", "300", "--accuracy-window", "3"]
    return ["--max-samples", "160", "--log-every", "40", *(["--max-repeats", "2"] if task == "repeat-copy" else [])]


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_time(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "wall_time_s"}


# -- every task through the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "method"), [("copy", "bptt"), ("repeat-copy", "dni-aux"), ("ptb-char", "dni"), ("multinet", "dni")]
)
def test_each_task_writes_its_summary_curve_and_checkpoint(capfd, tmp_path, fake_mnist, task, method):
    out = tmp_path / "run"
    args = ["train", "--task", task, "--method", method, "--T", "2", *TINY, *task_args(task, fake_mnist)]
    code, stdout, err = run_cli(capfd, *args, "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert COMMON_KEYS | TASK_KEYS[task] <= summary.keys()
    assert (summary["task"], summary["method"], summary["T"]) == (task, method, 2)
    assert summary["samples"] >= summary["max_samples"] and summary["wall_time_s"] > 0
    for name in ("config.json", "checkpoint.json", "learning_curve.png", "train.log", "metrics.jsonl"):
        assert (out / name).is_file(), name
    rows = read_rows(out)
    assert len(rows) >= 2 and rows[-1]["samples"] <= summary["samples"] and rows[-1]["step"] <= summary["steps"]
    assert RunFolder(out, {}).load_state()["training"]["model"]  # the last checkpoint, in the run folder's format
    assert stdout.startswith(f"{task} {method} T=2: ") and str(out) in stdout


def test_copy_curriculum_grows_the_length_when_the_error_is_below_threshold(capfd, tmp_path):
    # A threshold every error is below and a window of one batch: the length grows after every batch.
    out = tmp_path / "run"
    grow = ["--curriculum-threshold", "1000", "--curriculum-window", "1"]
    code, _, err = run_cli(
        capfd, "train", "--task", "copy", "--T", "2", *TINY, *grow, "--max-samples", "40", "--out", out
    )
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_length"] == 40 // 8 and summary["final_length"] == 40 // 8 + 1
    assert summary["paper_score"] == 40 // 8 + 3  # the episode length N + 3 ([Note: paper score])
    errors = summary["bit_errors_by_position"]  # [Note: errors by position], at the level not yet solved
    assert len(errors) == 40 // 8 + 1 and all(0 <= e <= 8 for e in errors) and sum(errors) > 0
    assert (out / "position_errors.png").read_bytes().startswith(b"\x89PNG")
    # The paper's 0.15 bits is not met by an untrained LSTM, even judged batch by batch: the length stays at 1.
    args = ["--curriculum-window", "1", "--max-samples", "40"]
    code, _, err = run_cli(capfd, "train", "--task", "copy", "--T", "2", *TINY, *args, "--out", tmp_path / "b")
    assert code == 0, err
    unsolved = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert unsolved["max_length"] == unsolved["paper_score"] == 0


@pytest.mark.parametrize(
    ("flag", "value", "key", "recorded"),
    [
        ("--synthesizer-target", "true", "synthesizer_target", "true"),
        ("--trace-decay", "0.5", "trace_decay", 0.5),
        ("--forget-bias", "1", "forget_bias", 1.0),
    ],
    ids=["true-target-ablation", "synthesizer-traces", "forget-bias"],
)
def test_copy_model_and_synthesizer_options_run_and_are_recorded(capfd, tmp_path, flag, value, key, recorded):
    out = tmp_path / "run"
    args = ["--method", "dni", "--T", "2", flag, value, "--max-samples", "40", "--log-every", "16"]
    code, _, err = run_cli(capfd, "train", "--task", "copy", *TINY, *args, "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary[key] == recorded and summary["samples"] >= 40
    assert read_rows(out)[-1]["sg_loss"] > 0  # M regressed onto a non-zero target


@pytest.mark.parametrize("task", ["copy", "ptb-char"])
def test_forget_bias_reaches_the_trained_lstm(capfd, tmp_path, task):
    """--forget-bias b is in the LSTM each task trains: after an update or two the forget rows of bias_ih are
    still b plus PyTorch's U(±1/√16) (Adam moves a weight ~1e-3 a step), the other gates' rows that alone."""
    data = ["--data-dir", ptb_dir(), "--eval-chars", "4000", "--max-samples", "16"] if task == "ptb-char" else []
    args = ["--task", task, "--method", "bptt", "--T", "2", *TINY, "--forget-bias", "5", "--log-every", "8"]
    code, _, err = run_cli(capfd, "train", *args, *(data or ["--max-samples", "8"]), "--out", tmp_path / "run")
    assert code == 0, err
    bias = RunFolder(tmp_path / "run", {}).load_state()["training"]["model"]["core.cell.bias_ih"]
    i, f, g, o = bias.chunk(4)  # hidden 16 each
    assert torch.all((f > 4.7) & (f < 5.3)), f
    assert all(gate.abs().max() < 0.3 for gate in (i, g, o))


def test_repeat_copy_curricula_grow_what_they_say_and_score_it(capfd, tmp_path):
    # Every batch solved (a threshold above any error, a window of one): one level per batch of 8 sequences.
    grow = ["--curriculum-threshold", "1000", "--curriculum-window", "1", "--max-samples", "56", "--log-every", "8"]
    base = ["train", "--task", "repeat-copy", "--method", "bptt", "--T", "2", *TINY, *grow, "--max-repeats", "2"]
    code, stdout, err = run_cli(capfd, *base, "--out", tmp_path / "both")
    assert code == 0, err
    assert "max N·L 12 (now at L=7, N=2)" in stdout
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    # levels (L, N): (1,1) (2,1) (2,2) (3,2) (4,2) (5,2) (6,2) solved, N capped at --max-repeats 2; now (7, 2)
    assert (summary["final_length"], summary["final_repeats"], summary["max_length"]) == (7, 2, 12)
    assert summary["paper_score"] == 6 * 2 + 3  # N·R + 3 of the last level solved, (6, 2)
    assert len(summary["bit_errors_by_position"]) == 7 * 2 + 1  # the output phase: N·L vectors, the end marker
    assert summary["repeat_curriculum"] == "both" and summary["score"].startswith("N·L")
    rows = read_rows(tmp_path / "both")
    assert [(r["length"], r["repeats"], r["output_length"]) for r in rows[:3]] == [(2, 1, 2), (2, 2, 4), (3, 2, 6)]
    assert [r["paper_score"] for r in rows[:3]] == [1 + 3, 2 + 3, 4 + 3]  # the metric rows carry it too

    code, _, err = run_cli(capfd, *base, "--repeat-curriculum", "length", "--out", tmp_path / "length")
    assert code == 0, err
    summary = json.loads((tmp_path / "length" / "summary.json").read_text())
    assert (summary["final_length"], summary["max_length"], summary["repeat_curriculum"]) == (8, 7, "length")
    assert summary["paper_score"] is None  # N drawn per batch: no one episode length per level
    assert "repeats" not in read_rows(tmp_path / "length")[0]


def test_ptb_short_run_on_the_real_data_learns_below_uniform(capfd, tmp_path):
    out = tmp_path / "run"
    args = ["--task", "ptb-char", "--method", "dni", "--T", "8", "--hidden-size", "32", "--batch-size", "16"]
    args += ["--data-dir", ptb_dir(), "--max-samples", "40000", "--eval-chars", "5000", "--log-every", "10000"]
    code, _, err = run_cli(capfd, "train", *args, "--threads", "1", "--no-progress", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    assert all(math.isfinite(r["valid_bpc"]) for r in rows) and len(rows) == 4
    assert math.isfinite(summary["test_bpc"]) and summary["test_bpc"] < math.log2(50) - 1.0  # well below uniform
    assert summary["valid_bpc"] == min(r["valid_bpc"] for r in rows)  # test is scored at the best validation


# -- resume ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "method"), [("copy", "dni-aux"), ("ptb-char", "dni"), ("multinet", "dni")])
def test_resume_after_an_interruption_gives_the_uninterrupted_numbers(
    capfd, tmp_path, fake_mnist, monkeypatch, task, method
):  # noqa: E501
    args = ["train", "--task", task, "--method", method, "--T", "2", *TINY, *task_args(task, fake_mnist)]
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "a")
    assert code == 0, err

    rows_a = read_rows(tmp_path / "a")
    stop_at = rows_a[1]["samples"]  # interrupt after the second checkpoint, before the run's end
    advance = Budget.advance

    def interrupted(self, samples):
        due = advance(self, samples)
        if self.progress.samples > stop_at:
            raise KeyboardInterrupt
        return due

    monkeypatch.setattr(Budget, "advance", interrupted)
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "b")
    assert code == 130, err
    assert not (tmp_path / "b" / "summary.json").exists()
    monkeypatch.setattr(Budget, "advance", advance)
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "b", "--resume")
    assert code == 0, err

    summary_a, summary_b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert without_time(summary_a) == without_time(summary_b)
    assert [without_time(r) for r in rows_a] == [without_time(r) for r in read_rows(tmp_path / "b")]


def test_a_run_folder_is_not_overwritten_and_resumes_only_with_its_config(capfd, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--task", "copy", "--method", "dni", "--T", "2", *TINY, "--out", out, "--log-every", "8"]
    code, _, err = run_cli(capfd, *args, "--max-samples", "16")
    assert code == 0, err
    code, _, err = run_cli(capfd, *args, "--max-samples", "32")  # no --resume: the run there is kept
    assert code == 2 and "already holds a run" in err
    code, _, err = run_cli(capfd, *args, "--max-samples", "32", "--discount", "0.5", "--resume")
    assert code == 2 and "discount: 1.0 -> 0.5" in err
    code, _, err = run_cli(capfd, *args, "--max-samples", "32", "--resume")  # a larger budget may differ
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["samples"] >= 32


def test_a_checkpoint_of_the_old_format_is_refused_in_one_line(capfd, tmp_path):
    """Before the run folder was shared (issue #17), a recurrent run kept a single checkpoint.pt."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"old")
    args = ["train", "--task", "copy", "--method", "bptt", "--T", "2", *TINY, "--max-samples", "8", "--out", out]
    code, _, err = run_cli(capfd, *args, "--resume")
    assert code == 2 and "older synthgrad" in err and len(err.splitlines()) == 1


# -- user errors: one line, exit 2, nothing written ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--task", "ptb-char", "--data-dir", "{empty}"], ["ptb.char.train.txt", "not found"]),
        (["--task", "copy", "--T", "0"], ["--T", "got 0"]),
        (["--task", "sorting"], ["--task", "'sorting'"]),
        (["--task", "copy", "--method", "cdni"], ["--method cdni", "bptt"]),
        (["--task", "multinet", "--method", "dni-aux"], ["multinet", "dni-aux"]),
        (["--task", "copy", "--layers", "3"], ["--layers"]),
        (["--T", "3"], ["--T", "--task"]),
        (["--task", "copy", "--discount", "0"], ["--discount", "got 0"]),
        (["--task", "ptb-char", "--synthesizer-target", "true"], ["--synthesizer-target", "copy"]),
        (["--task", "copy", "--method", "bptt", "--synthesizer-target", "true"], ["--synthesizer-target", "dni"]),
        (["--task", "copy", "--synthesizer-target", "oracle"], ["--synthesizer-target", "'oracle'"]),
        (["--task", "copy", "--trace-decay", "1.5"], ["--trace-decay", "got 1.5"]),
        (["--task", "ptb-char", "--trace-decay", "0.5"], ["--trace-decay", "copy"]),
        (["--task", "copy", "--method", "bptt", "--trace-decay", "1"], ["--trace-decay", "dni"]),
        (["--task", "copy", "--synthesizer-target", "true", "--trace-decay", "1"], ["--trace-decay", "true"]),
        # An option another task reads is refused, not silently ignored.
        (["--task", "copy", "--patience", "3"], ["--patience", "--task ptb-char", "not of copy"]),
        (["--task", "ptb-char", "--curriculum-window", "1"], ["--curriculum-window", "copy and repeat-copy"]),
        (["--task", "copy", "--max-repeats", "2"], ["--max-repeats", "--task repeat-copy"]),
        (["--task", "repeat-copy", "--target-accuracy", "0.5"], ["--target-accuracy", "multinet"]),
        (["--task", "multinet", "--forget-bias", "1"], ["--forget-bias", "ptb-char", "not of multinet"]),
        (["--task", "copy", "--forget-bias", "nan"], ["--forget-bias", "finite", "nan"]),
    ],
    ids=[
        "ptb-missing",
        "T-0",
        "unknown-task",
        "copy-cdni",
        "multinet-aux",
        "feedforward-option",
        "T-without-task",
        "discount-0",
        "true-target-ptb",
        "true-target-bptt",
        "unknown-target",
        "trace-decay-range",
        "trace-decay-ptb",
        "trace-decay-bptt",
        "trace-decay-true-target",
        "patience-copy",
        "curriculum-ptb",
        "repeats-copy",
        "accuracy-repeat-copy",
        "forget-bias-multinet",
        "forget-bias-nan",
    ],
)
def test_bad_input_is_one_line_and_exit_2(capfd, tmp_path, args, needles):
    (tmp_path / "empty").mkdir()
    args = [str(a).replace("{empty}", str(tmp_path / "empty")) for a in args]
    out = tmp_path / "run"
    code, stdout, err = run_cli(capfd, "train", *args, "--max-samples", "10", "--out", out)
    assert code == 2 and "Traceback" not in err and stdout == ""
    assert len(err.splitlines()) == 1 and err.startswith("synthgrad: error: "), err
    assert all(n in err for n in needles), err
    assert not out.exists()


def test_a_budget_is_required(capfd, tmp_path):
    code, _, err = run_cli(capfd, "train", "--task", "copy", "--out", tmp_path / "run")
    assert code == 2 and "--max-samples" in err and len(err.splitlines()) == 1
