"""Checkpoints survive a kill: SIGKILL then --resume gives bit-identical results; writes are atomic; loads are safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import synthgrad.checkpoint
from helpers import checkpoint_of, run_cli, write_fake_mnist
from synthgrad.checkpoint import load_checkpoint, save_checkpoint
from synthgrad.errors import SynthgradError

REPO = Path(__file__).resolve().parents[1]


# -- resume after SIGKILL ------------------------------------------------------------------------------------


def test_resume_after_sigkill_matches_an_uninterrupted_run(capfd, tmp_path):
    # DNI with folding, p-updates and diagnostics: the resumed run must restore the weights, every optimizer, the
    # update-draw generators, the step counts (diagnostics schedule), the folded batches in flight (their graphs
    # rebuilt from the stashed weights) and the history. ~0.9 s per epoch on one thread, so there is time to kill
    # the process between its first checkpoint and its last epoch.
    data = write_fake_mnist(tmp_path / "data", n_train=2048, n_test=200)
    common = ["--data-dir", data, "--layers", "3", "--method", "dni", "--update-prob", "0.7", "--fold-every", "3"]
    common += ["--diagnose-every", "7", "--batch-size", "64", "--epochs", "3", "--threads", "1", "--no-progress"]
    common = [str(a) for a in common]

    code, _, err = run_cli(capfd, "train", *common, "--out", tmp_path / "a")
    assert code == 0, err

    out_b = tmp_path / "b"
    cmd = [sys.executable, "-m", "synthgrad.cli", "train", *common, "--out", str(out_b)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out_b / "checkpoint.json").exists():  # the first checkpoint is written after epoch 1
            assert proc.poll() is None, f"run B ended before its first checkpoint:\n{proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "run B wrote no checkpoint in 120 s"
            time.sleep(0.01)
        assert proc.poll() is None, "run B finished before it could be killed: the test needs slower epochs"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    manifest, state = checkpoint_of(out_b)
    killed_at = manifest["progress"]["epoch"]
    assert any(s["flights"] for s in state["job"]["stages"]), "no folded batch in flight at the kill: tests less"
    assert killed_at in (1, 2), f"killed after epoch {killed_at}: nothing left to resume"
    assert not (out_b / "summary.json").exists()

    code, _, err = run_cli(capfd, "train", *common, "--out", out_b, "--resume")
    assert code == 0, err

    summary_a = json.loads((tmp_path / "a" / "summary.json").read_text())
    summary_b = json.loads((out_b / "summary.json").read_text())
    for key in ("test_error", "train_loss", "test_loss", "steps", "epochs", "final_true_cosine"):
        assert summary_b[key] == summary_a[key], key

    rows_a = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(r) for r in (out_b / "metrics.jsonl").read_text().splitlines()]
    timing = ("train_time_s", "wall_time_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_b] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows_a
    ]

    stages_a = checkpoint_of(tmp_path / "a")[1]["job"]["stages"]
    stages_b = checkpoint_of(out_b)[1]["job"]["stages"]
    for a, b in zip(stages_a, stages_b, strict=True):
        assert b["steps"] == a["steps"]
        assert torch.equal(b["generator"], a["generator"])
        assert b["module"].keys() == a["module"].keys()
        for name, tensor in a["module"].items():
            assert torch.equal(b["module"][name], tensor), name


# -- corrupt checkpoints -------------------------------------------------------------------------------------


def test_truncated_checkpoint_refuses_resume_in_one_line(capfd, tmp_path):
    data = write_fake_mnist(tmp_path / "data", n_train=256, n_test=50)
    args = ["train", "--data-dir", data, "--out", tmp_path / "run", "--layers", "2", "--width", "16"]
    args += ["--batch-size", "64", "--threads", "1", "--no-progress", "--epochs", "1"]
    code, _, err = run_cli(capfd, *args)
    assert code == 0, err
    manifest, _ = checkpoint_of(tmp_path / "run")
    ckpt = tmp_path / "run" / manifest["files"][0]
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[: len(blob) // 2])

    code, _, err = run_cli(capfd, *args[:-1], "2", "--resume")
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("synthgrad: error: ") and str(ckpt) in lines[0], lines[0]
    assert ckpt.read_bytes() == blob[: len(blob) // 2], "the damaged file is left for inspection"


def test_failed_write_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.arange(5.0)})
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(5)})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "fresh.pt", {"epoch": 1})
    monkeypatch.setattr(torch, "save", real_save)

    kept = load_checkpoint(path)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


class _Payload:
    """Unpickling this writes a marker file: proof that the loader executed code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "payload": _Payload(marker)}, path)
    with pytest.raises(SynthgradError, match="was not loaded") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "\x1b" not in message, message
    assert not marker.exists(), "the pickle's code ran"
    # control: the same file loaded without weights_only does run it, so the marker check can fail
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"


def test_resume_from_a_malicious_checkpoint_is_one_line_exit_2(capfd, tmp_path):
    marker = tmp_path / "executed"
    out = tmp_path / "run"
    data = write_fake_mnist(tmp_path / "data", n_train=256, n_test=50)
    args = ["train", "--data-dir", data, "--out", out, "--threads", "1", "--epochs", "1", "--layers", "2"]
    assert run_cli(capfd, *args)[0] == 0
    manifest, _ = checkpoint_of(out)
    hostile = out / manifest["files"][0]
    torch.save({"format": 2, "state": {"payload": _Payload(marker)}}, hostile)
    code, _, err = run_cli(capfd, *args[:-3], "2", "--layers", "2", "--resume")
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("synthgrad: error: "), err
    assert str(hostile) in lines[0] and "\x1b" not in lines[0] and "weights_only=False" not in lines[0]
    assert not marker.exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SynthgradError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")


def test_atomic_write_goes_through_a_temp_file_in_the_same_directory(tmp_path, monkeypatch):
    """The rename that makes the write atomic must stay on one filesystem: the temp file is a sibling."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(synthgrad.checkpoint.os, "replace", spy)
    save_checkpoint(tmp_path / "c.pt", {"epoch": 3})
    assert len(seen) == 1
    src, dst = seen[0]
    assert dst == tmp_path / "c.pt" and src.parent == tmp_path and src != dst
    assert load_checkpoint(dst)["epoch"] == 3
