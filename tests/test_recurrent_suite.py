"""`synthgrad reproduce recurrent`: the shipped experiment files are its rows, the report names each beside its
result, groups carry the other rows over, and a bad budget is one line."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from conftest import shared_data_dir
from helpers import run_cli
from synthgrad.experiments.recurrent_suite import suite
from synthgrad.recurrent.task_config import RecurrentConfig, experiment_name, experiment_names, load_experiment


def ptb_dir() -> Path:
    path = shared_data_dir()
    if path is None or not (path / "ptb" / "ptb.char.train.txt").is_file():
        pytest.skip("Penn Treebank not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    return path


def without_time(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "wall_time_s"}


def test_reproduce_recurrent_quick_writes_every_row_beside_the_paper(capfd, tmp_path):
    data = ptb_dir()
    if not (data / "mnist").is_dir():
        pytest.skip("real MNIST not found")
    out = tmp_path / "suite"
    args = ["reproduce", "recurrent", "--quick", "--threads", "1", "--no-progress", "--data-dir", data, "--out", out]
    code, stdout, err = run_cli(capfd, *args)
    assert code == 0, err
    results = json.loads((out / "report.json").read_text())
    assert len(results) == 2 * 4 * 3 + 3 + 2  # Copy/Repeat Copy × T 2..5 × 3 methods, PTB × 3, two networks × 2
    report = (out / "report.md").read_text()
    assert "| dni (paper) | 16 | 14 | 18 | 18 |" in report and "1.354" in report and "locked (bptt)" in report
    assert (out / "ptb_bpc.png").is_file() and (out / "multinet_accuracy.png").is_file()
    # Run again: every row is finished, so nothing is trained twice and the numbers stay.
    code, _, err = run_cli(capfd, *args)
    assert code == 0, err
    again = json.loads((out / "report.json").read_text())
    assert [without_time(r) for r in again] == [without_time(r) for r in results]


def test_the_suite_runs_the_shipped_experiment_files_and_they_are_the_committed_reports_rows():
    """`synthgrad reproduce recurrent` runs one row per file in synthgrad/configs/recurrent/, each file named
    after its row, with a comment naming the paper's row, and holding exactly the committed report's
    (reports/recurrent) task, method, T and budget; one budget option gives every row that budget instead."""
    committed = json.loads((Path(__file__).parents[1] / "reports" / "recurrent" / "report.json").read_text())
    rows = suite(None, quick=False, data_dir=None, out=Path("suite"))
    assert sorted(r.experiment for r in rows) == experiment_names() and len(rows) == len(committed) == 29
    for row in rows:
        cfg, values = row.config, load_experiment(row.experiment)
        assert row.experiment == experiment_name(cfg.task, cfg.method, cfg.T)
        assert cfg == RecurrentConfig.from_dict({**values, "out": cfg.out})  # the file, and only the file
        text = (files("synthgrad.configs") / "recurrent" / f"{row.experiment}.toml").read_text()
        assert text.startswith("# PAPER.md §"), row.experiment
        (r,) = [r for r in committed if (r["task"], r["method"], r["T"]) == (cfg.task.value, cfg.method.value, cfg.T)]
        budget = {"max_minutes": cfg.max_minutes, "max_samples": cfg.max_samples}
        assert budget == {k: r.get(k) for k in budget}, row.experiment
    keys = {(r.config.task.value, r.config.method.value, r.config.T) for r in rows}
    assert keys == {(r["task"], r["method"], r["T"]) for r in committed}
    two = suite({"max_minutes": 2.0}, quick=False, data_dir=None, out=Path("s"))
    assert {(r.config.max_minutes, r.config.max_samples) for r in two} == {(2.0, None)}
    report = (Path(__file__).parents[1] / "reports" / "recurrent" / "report.md").read_text()
    assert all(f"`{name}.toml`" in report for name in experiment_names())  # each row's file beside its result


def test_reproduce_recurrent_groups_runs_only_those_tasks_and_carries_the_others(capfd, tmp_path):
    out = tmp_path / "suite"
    out.mkdir()
    # An old row says "carried": False, as every row a suite ran itself does; carrying it must set it to True.
    old_ptb = {"task": "ptb-char", "method": "bptt", "T": 8, "test_bpc": 1.989, "valid_bpc": 2.031, "samples": 7,
               "hidden_size": 256, "batch_size": 32, "lr": 0.001, "max_minutes": 1.5, "carried": False}  # fmt: skip
    old_copy = {**old_ptb, "task": "copy", "T": 2, "max_length": 99}
    (out / "report.json").write_text(json.dumps([old_copy, old_ptb]))
    args = ["reproduce", "recurrent", "--quick", "--threads", "1", "--no-progress", "--out", out]
    code, _, err = run_cli(capfd, *args, "--groups", "copy")
    assert code == 0, err
    results = json.loads((out / "report.json").read_text())
    assert sorted(r["task"] for r in results) == ["copy"] * 12 + ["ptb-char"]  # the old Copy row is replaced
    assert [r["carried"] for r in results if r["task"] == "ptb-char"] == [True]
    assert all(r["commit"] and not r["carried"] for r in results if r["task"] == "copy")
    report = (out / "report.md").read_text()
    assert "| bptt | 1.989 | 2.031 | 7 | 1.354 |" in report
    assert "rows of ptb-char are carried over" in report and "| 99 |" not in report
    # Each section states its own rows' budget: the carried PTB row's, not this run's.
    assert "Budget per row: 1.5 min; commit not recorded (carried over from an earlier run)." in report
    assert "Budget per row: 200 sequences; commit " in report
    code, _, err = run_cli(capfd, *args, "--groups", "copy,ptb")
    assert code == 2 and "unknown group(s) ptb" in err


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_a_suite_budget_that_is_not_positive_names_its_option_before_any_row(capfd, tmp_path, minutes):
    out = tmp_path / "suite"
    code, stdout, err = run_cli(capfd, "reproduce", "recurrent", "--minutes-per-run", minutes, "--out", out)
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1, err
    assert "--minutes-per-run" in err and f"got {minutes}" in err
    assert not out.exists()


def test_copy_tasks_default_to_traces_at_full_discount_and_ptb_to_a_tenth():
    """[Note: Copy defaults]: Copy tasks run DNI at λ = 1 with traces μ = 1; PTB (an endless stream) at λ = 0.1
    without; a method without a bootstrapped synthesizer gets no traces by default."""
    from synthgrad.recurrent import RecurrentMethod, RecurrentTask, SynthesizerTarget

    for task in (RecurrentTask.COPY, RecurrentTask.REPEAT_COPY):
        cfg = RecurrentConfig(task=task, max_samples=1).validate().resolve()
        assert (cfg.discount, cfg.trace_decay) == (1.0, 1.0)
    ptb = RecurrentConfig(task=RecurrentTask.PTB_CHAR, max_samples=1).validate().resolve()
    assert (ptb.discount, ptb.trace_decay) == (0.1, 0.0)
    # DNI + Aux's weight: a tenth on Copy tasks, 1 on PTB; 1 (unused) for the other methods, as it always was
    aux = {t: RecurrentConfig(task=t, method=RecurrentMethod.DNI_AUX, max_samples=1).resolve() for t in RecurrentTask}
    weights = [aux[t].aux_weight for t in (RecurrentTask.COPY, RecurrentTask.REPEAT_COPY, RecurrentTask.PTB_CHAR)]
    assert weights == [0.1, 0.1, 1.0]
    assert RecurrentConfig(task=RecurrentTask.COPY, max_samples=1).resolve().aux_weight == 1.0  # dni
    assert RecurrentConfig(method=RecurrentMethod.DNI_AUX, aux_weight=0.5, max_samples=1).resolve().aux_weight == 0.5
    for changes in ({"method": RecurrentMethod.BPTT}, {"synthesizer_target": SynthesizerTarget.TRUE}):
        assert RecurrentConfig(max_samples=1, **changes).validate().resolve().trace_decay == 0.0
    assert RecurrentConfig(max_samples=1, trace_decay=0.0).validate().resolve().trace_decay == 0.0
