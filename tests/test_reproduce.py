"""`synthgrad reproduce feedforward`: groups, the report beside the paper's, report-only from finished runs."""

from __future__ import annotations

import json

from helpers import run_cli, write_fake_mnist


def test_quick_fcn_group_then_report_only(capfd, tmp_path):
    data = write_fake_mnist(tmp_path / "data", n_train=512, n_test=64)
    out = tmp_path / "repro"
    common = ["reproduce", "feedforward", "--quick", "--threads", "1", "--no-progress", "--data-dir", data]
    code, _, err = run_cli(capfd, *common, "--groups", "fcn", "--out", out)
    assert code == 0, err
    report = (out / "report.md").read_text()
    for n in (3, 4, 5, 6):
        assert f"| {n} | " in report  # every depth, beside the paper's numbers and the goal column
    assert "goal: ≤ Bprop + 0.3" in report and (out / "sg_quality_fcn6_dni.png").exists()
    results = json.loads((out / "results.json").read_text())
    assert {"fcn6-backprop", "fcn6-dni", "fcn6-cdni"} <= results.keys()

    # The paper's-recipe rows have not run: report-only leaves them out and trains nothing.
    code, _, err = run_cli(capfd, *common, "--report-only", "--out", out)
    assert code == 0, err
    assert not (out / "paper").exists()
    assert json.loads((out / "results.json").read_text()).keys() == results.keys()


def test_unknown_group_is_one_line_and_exit_2(capfd, tmp_path):
    code, _, err = run_cli(capfd, "reproduce", "feedforward", "--groups", "fcn,nope", "--out", tmp_path / "r")
    assert code == 2 and "nope" in err and "Traceback" not in err
