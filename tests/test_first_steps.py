"""A newcomer's first steps (issue #21): the command is reachable after the demo, every entry point finds the data
the same way, the demo's progress bars only on a terminal, and whole-epoch plots tick at whole epochs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

import synthgrad.data
from helpers import run_cli, write_fake_mnist
from synthgrad import plots

REPO = Path(__file__).resolve().parents[1]


def test_setup_and_demo_say_how_to_reach_the_command() -> None:
    for script in ("setup.sh", "demo.sh"):
        text = (REPO / "scripts" / script).read_text()
        assert "source .venv/bin/activate" in text and "synthgrad --help" in text, script
    for script in ("setup.sh", "demo.sh", "test.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], check=True)


def test_the_scripts_leave_the_data_lookup_to_the_package() -> None:
    """One lookup order, in `resolve_data_dir`: the scripts no longer carry a copy of it."""
    for script in ("demo.sh", "test.sh"):
        assert "shared/data" not in (REPO / "scripts" / script).read_text().split("set -euo pipefail")[1], script


def test_the_cli_finds_data_beside_the_checkout_without_options(capfd, tmp_path, monkeypatch) -> None:
    """`synthgrad train` with neither --data-dir nor $SYNTHGRAD_DATA_DIR reads ../shared/data beside the checkout,
    as the demo and the tests do."""
    checkout = tmp_path / "work" / "synthgrad"
    write_fake_mnist(tmp_path / "work" / "shared" / "data" / "mnist", n_train=64, n_test=16)
    monkeypatch.setattr(synthgrad.data, "source_checkout", lambda: checkout)
    monkeypatch.delenv("SYNTHGRAD_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, _, err = run_cli(capfd, "train", "--layers", "2", "--width", "8", "--batch-size", "32", "--epochs", "1",
                           "--threads", "1", "--no-progress", "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(("flag", "progress"), [([], None), (["--no-progress"], False)])
def test_the_demo_shows_progress_bars_only_on_a_terminal(capfd, tmp_path, monkeypatch, flag, progress) -> None:
    """None: `show_progress` decides (bars when stderr is a terminal); the demo used to force them on."""
    seen = {}
    monkeypatch.setattr("synthgrad.experiments.demo.demo", lambda **kw: seen.update(kw) or [])
    code, _, err = run_cli(capfd, "demo", "--out", tmp_path / "demo", *flag)
    assert code == 0, err
    assert seen["progress"] is progress


@pytest.mark.parametrize(("epochs", "whole"), [([1.0, 2.0, 3.0], True), ([0.5, 1.0, 1.5, 2.0], False)])
def test_epoch_ticks_are_whole_when_the_epochs_are(epochs, whole) -> None:
    fig, ax = plt.subplots()
    ax.plot(epochs, range(len(epochs)))
    plots.epoch_ticks(ax, epochs)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if epochs[0] <= t <= epochs[-1]]
    plt.close(fig)
    assert all(float(t).is_integer() for t in ticks) == whole, ticks


def test_learning_curves_of_a_three_epoch_run_tick_1_2_3(tmp_path, monkeypatch) -> None:
    axes = []
    real = plots.epoch_ticks
    monkeypatch.setattr(plots, "epoch_ticks", lambda ax, e: (axes.append(ax), real(ax, e)))
    rows = [{"epoch": float(e), "train_loss": 1.0 / e, "test_error": 10.0 / e} for e in (1, 2, 3)]
    plots.learning_curves(rows, tmp_path / "c.png")
    assert axes and all(list(ax.get_xticks()[(ax.get_xticks() >= 1) & (ax.get_xticks() <= 3)]) == [1, 2, 3]
                        for ax in axes)  # fmt: skip
