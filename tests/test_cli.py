"""The `synthgrad` command: every user error is one line on stderr and exit code 2; a tiny run writes its outputs.

Most runs use a small fake dataset in MNIST's IDX format (600 train / 100 test random 28x28 images with random
labels), written once per session: fast, and independent of the real data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import checkpoint_of, run_cli, write_fake_mnist
from synthgrad.config import named_configs

REPO = Path(__file__).resolve().parents[1]
TINY = ["--layers", "3", "--width", "32", "--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("fake_mnist"))


def assert_one_line_error(code: int, err: str, *needles: str, expected_code: int = 2) -> str:
    """Exit code, exactly one stderr line `synthgrad: error: ...` containing every needle, no traceback."""
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("synthgrad: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# -- bad values on the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--layers", "0"], ["--layers", "got 0"]),
        (["--epochs", "0"], ["--epochs", "got 0"]),
        (["--update-prob", "1.5"], ["--update-prob", "1.5"]),
        (["--update-prob", "0"], ["--update-prob", "got 0"]),
        (["--lr", "-1"], ["--lr", "-1"]),
        (["--lr", "abc"], ["--lr", "'abc'"]),  # argparse type error
        (["--method", "foo"], ["--method", "'foo'"]),  # argparse choice error
        (["--unlock", "full", "--method", "backprop"], ["--unlock", "--method dni or cdni"]),
        (["--config", "does-not-exist"], ["'does-not-exist'"]),
    ],
    ids=[
        "layers-0",
        "epochs-0",
        "update-prob-1.5",
        "update-prob-0",
        "lr-negative",
        "lr-abc",
        "method-foo",
        "unlock-backprop",
        "config-missing",
    ],
)
def test_bad_option_is_one_line_exit_2(capfd, tmp_path, fake_data, args, needles):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capfd, "train", *TINY, "--data-dir", fake_data, "--out", out, *args)
    assert_one_line_error(code, err, *needles)
    assert not (out / "config.json").exists(), "rejected before any work"
    assert stdout == ""


# -- bad config files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "needles"),
    [
        ('method = "cdni"\nfoo = 1\n', ["unknown config key", "foo"]),
        ("layers = [\n", ["not valid TOML", "bad.toml"]),
        # wrong types: used to escape validation as a TypeError traceback (or crash mid-run)
        ('lr = "fast"\n', ["lr", "'fast'"]),
        ("seed = 1.5\n", ["seed", "1.5"]),
        ("synthesizer_hidden = 5\n", ["synthesizer_hidden", "5"]),
    ],
    ids=["unknown-key", "invalid-toml", "str-for-float", "float-for-int", "int-for-list"],
)
def test_bad_config_file_is_one_line_exit_2(capfd, tmp_path, fake_data, toml, needles):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", fake_data, "--out", out, "--config", config)
    assert_one_line_error(code, err, *needles)
    assert not (out / "config.json").exists()


def test_good_config_file_is_used(capfd, tmp_path, fake_data):
    """The control for the bad-file tests: a valid file is read, and the command line overrides it."""
    config = tmp_path / "good.toml"
    config.write_text('method = "cdni"\nlayers = 5\nseed = 7\n')
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", fake_data, "--out", out, "--config", config)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert (saved["method"], saved["seed"], saved["layers"]) == ("cdni", 7, 3)  # --layers 3 beats the file's 5


# -- bad data ------------------------------------------------------------------------------------------------


def test_missing_mnist_files_names_them(capfd, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", empty, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "missing", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def test_truncated_gzip_names_the_file(capfd, tmp_path):
    data = write_fake_mnist(tmp_path / "data")
    images = data / "train-images-idx3-ubyte.gz"
    blob = images.read_bytes()
    images.write_bytes(blob[: len(blob) // 2])
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", data, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "train-images-idx3-ubyte.gz", "truncated")


def test_missing_data_in_a_real_process_is_one_line(tmp_path):
    """The same in a fresh interpreter, where `main` installs its stderr logging: still one line, exit 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = [sys.executable, "-m", "synthgrad.cli", "train", *TINY, "--data-dir", str(empty), "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "missing", "train-images-idx3-ubyte")


# -- output directory, resume and device ---------------------------------------------------------------------


def test_out_dir_holding_a_run_needs_resume(capfd, tmp_path, fake_data):
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", fake_data, "--out", out)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", fake_data, "--out", out)
    assert_one_line_error(code, err, str(out), "--resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the existing run is left alone"


def test_resume_with_another_method_is_refused(capfd, tmp_path, fake_data):
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", fake_data, "--out", out, "--method", "dni")
    assert code == 0, err
    code, _, err = run_cli(
        capfd, "train", *TINY, "--data-dir", fake_data, "--out", out, "--method", "cdni", "--resume", "--epochs", "2"
    )
    assert_one_line_error(code, err, "--resume", "method", "'dni'", "'cdni'")
    assert checkpoint_of(out)[0]["progress"]["epoch"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capfd, tmp_path, fake_data):
    out = tmp_path / "run"
    code, _, err = run_cli(capfd, "train", *TINY, "--data-dir", fake_data, "--out", out, "--device", "cuda")
    assert_one_line_error(code, err, "--device cuda", "GPU")


# -- success -------------------------------------------------------------------------------------------------


def test_tiny_run_writes_every_output(capfd, tmp_path, fake_data):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capfd,
        "train",
        *TINY,
        "--data-dir",
        fake_data,
        "--out",
        out,
        "--method",
        "dni",
        "--epochs",
        "2",
        "--diagnose-every",
        "3",
    )
    assert code == 0, err
    assert "Traceback" not in err
    assert "dni: test error" in stdout and str(out) in stdout

    summary = json.loads((out / "summary.json").read_text())
    assert {"test_error", "method", "epochs", "wall_time_s"} <= set(summary)
    assert summary["method"] == "dni"
    assert summary["epochs"] == 2
    assert summary["wall_time_s"] > 0
    # A percentage of 100 test examples is a whole number; random labels keep it far above a fraction's 0..1.
    error = summary["test_error"]
    assert 1 < error <= 100 and error == round(error)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["test_error"] == error
    assert rows[-1]["train_loss"] == summary["train_loss"]
    assert len(rows[-1]["sg_loss"]) == 2  # 3 layers: two decoupled interfaces

    diagnostics = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
    assert diagnostics and all(len(d["true_cosine"]) == 2 for d in diagnostics)
    for png in ("learning_curves.png", "gradient_quality.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    config = json.loads((out / "config.json").read_text())
    assert (config["method"], config["epochs"], config["layers"], config["width"]) == ("dni", 2, 3, 32)
    manifest, state = checkpoint_of(out)
    assert manifest["progress"]["epoch"] == 2 and manifest["config"] == config
    assert [s["steps"] for s in state["job"]["stages"]] == [summary["steps"]] * 3 == [2 * (600 // 64)] * 3


def test_configs_lists_the_shipped_names(capfd):
    code, stdout, err = run_cli(capfd, "configs")
    assert code == 0, err
    listed = [line.split()[0] for line in stdout.splitlines()]
    assert listed == named_configs()
    for line in stdout.splitlines():
        assert line.split()[1] in ("backprop", "dni", "cdni"), line


def test_configs_names_are_accepted_by_train(capfd, tmp_path, fake_data):
    """Each listed name is something `train --config` accepts (checked with a config error the CLI then reports)."""
    names = named_configs()
    if not names:
        pytest.skip("no shipped configs yet")
    # --epochs 0 stops right after the config is read: a bad name would fail with a different message.
    code, _, err = run_cli(
        capfd, "train", "--config", names[0], "--data-dir", fake_data, "--out", tmp_path / "run", "--epochs", "0"
    )
    assert_one_line_error(code, err, "--epochs must be >= 1")


def test_the_cli_offers_every_synthesizer_kind() -> None:
    from synthgrad.cli import SYNTHESIZER_KINDS
    from synthgrad.synthesizers import SynthesizerKind

    assert [k.value for k in SynthesizerKind] == SYNTHESIZER_KINDS


def test_a_recurrent_experiment_file_runs_by_its_name(capfd, tmp_path):
    code, out, err = run_cli(capfd, "train", "--config", "copy_dni_T2", "--max-samples", "64", "--out", tmp_path / "r",
                             "--threads", "1", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert out.startswith("copy dni T=2:")
