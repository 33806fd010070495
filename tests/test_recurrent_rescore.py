"""[Note: per-step threshold]: a finished Copy run re-scored under the per-step reading of the 0.15-bit threshold,
from its metric rows and its end-of-run errors by position, without training."""

from __future__ import annotations

import pytest

from synthgrad.errors import ConfigError
from synthgrad.recurrent import RecurrentConfig
from synthgrad.recurrent.rescore import per_step_threshold, rescore_rows, rescore_run, rescore_summary
from synthgrad.recurrent.runner import train_recurrent


def test_the_per_step_threshold_is_015_bits_per_scored_output_step():
    assert per_step_threshold("copy", 1) == pytest.approx(0.15)  # at N = 1 both readings agree
    assert per_step_threshold("copy", 7) == pytest.approx(1.05)
    assert per_step_threshold("repeat-copy", 3, repeats=2) == pytest.approx(0.15 * 7)  # 6 vectors + end marker
    with pytest.raises(ConfigError):
        per_step_threshold("repeat-copy", 3)  # N drawn per batch: no one threshold


def test_rows_count_a_level_only_when_all_their_batches_ran_at_it():
    rows = [
        {"length": 3, "bit_errors": 0.2},  # the first row: its batches may have started at an earlier level
        {"length": 3, "bit_errors": 0.40},  # 0.40 < 0.45: level 3 solved per step
        {"length": 4, "bit_errors": 0.10},  # spans the change from 3 to 4: not evidence for 4
        {"length": 4, "bit_errors": 0.65},  # 0.65 > 0.60
        {"length": 4, "bit_errors": 0.59},  # 0.59 < 0.60: level 4
    ]
    assert rescore_rows("copy", rows) == [3, 4]
    assert rescore_rows("copy", rows[:4]) == [3]
    two_axes = [{"length": 3, "repeats": 2, "bit_errors": 0.5}, {"length": 3, "repeats": 2, "bit_errors": 1.0}]
    assert rescore_rows("repeat-copy", two_axes) == [6]  # 1.0 < 0.15 · 7


def test_a_summary_counts_its_final_level_when_its_errors_by_position_are_under_the_per_step_threshold():
    # The suite's DNI T = 2 row: 6 solved, ended at 7 with 0.24 bits wrong (report.md, errors by position).
    dni = {"task": "copy", "method": "dni", "T": 2, "max_length": 6, "final_length": 7,
           "bit_errors_by_position": [0, 0.01, 0.01, 0, 0.01, 0.01, 0.19]}  # fmt: skip
    r = rescore_summary(dni)
    assert (r["max_length_per_step"], r["final_level_bits"], r["final_level_threshold"]) == (7, 0.23, 1.05)
    bptt = {"task": "copy", "max_length": 3, "final_length": 4, "bit_errors_by_position": [0, 0.05, 0.12, 2.13]}
    assert rescore_summary(bptt)["max_length_per_step"] == 3  # 2.3 > 0.6: stays
    assert rescore_summary({**bptt, "bit_errors_by_position": None})["final_level_bits"] is None
    with pytest.raises(ConfigError, match="length"):
        rescore_summary({"task": "repeat-copy", "max_length": 1, "final_length": 2, "repeat_curriculum": "length"})


def test_a_finished_run_is_rescored_from_its_folder(tmp_path):
    values = {"task": "copy", "method": "bptt", "T": 2, "hidden_size": 8, "batch_size": 4, "max_samples": 48,
              "log_every": 8, "threads": 1, "curriculum_window": 1, "out": str(tmp_path / "run")}  # fmt: skip
    summary = train_recurrent(RecurrentConfig.from_dict(values), progress=False)
    strict = rescore_run(tmp_path / "run", per_step=1e-9)  # nothing new passes a threshold of ~0
    assert strict["max_length_per_step"] == summary["max_length"] and strict["levels_from_rows"] == []
    lenient = rescore_run(tmp_path / "run", per_step=100.0)  # every level with evidence passes
    assert lenient["max_length_per_step"] == summary["final_length"]
    assert lenient["levels_from_rows"] == [summary["final_length"]]  # its rows after the first, all at that level
    assert lenient["final_level_bits"] == round(sum(summary["bit_errors_by_position"]), 4)
