"""The run folder every run shares: one format, atomic checkpoints, and a one-line refusal for every bad folder."""

from __future__ import annotations

import json

import pytest
import torch

from synthgrad.errors import ConfigError
from synthgrad.training.run_folder import MANIFEST, RunFolder

CONFIG = {"method": "dni", "epochs": 2, "out": "x"}


def finished(out, **kw) -> RunFolder:
    run = RunFolder(out, CONFIG, resumable={"epochs", "out"}, **kw)
    assert run.open(resume=False) is None
    run.start()
    run.progress.epoch = 1
    run.record({"test_error": 50.0})
    run.checkpoint({"w": torch.arange(3.0)})
    run.progress.epoch = 2
    run.checkpoint({"w": torch.arange(4.0)})
    run.close()
    return run


def test_a_run_checkpoints_atomically_and_resumes(tmp_path) -> None:
    out = tmp_path / "run"
    finished(out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-r0-2.pt", "checkpoint.json", "config.json", "metrics.jsonl", "train.log"]
    run = RunFolder(out, {**CONFIG, "epochs": 5}, resumable={"epochs", "out"})
    state = run.open(resume=True)
    assert torch.equal(state["w"], torch.arange(4.0)) and run.progress.epoch == 2
    assert run.progress.history[0]["test_error"] == 50.0
    run.start()
    run.checkpoint({"w": torch.zeros(1)})
    assert json.loads((out / MANIFEST).read_text())["files"] == ["checkpoint-r0-3.pt"]
    assert not (out / "checkpoint-r0-2.pt").exists()


def test_open_creates_nothing_until_start(tmp_path) -> None:
    """A run whose data fails to load leaves no folder behind, so the same --out works once the data is fixed."""
    out = tmp_path / "run"
    RunFolder(out, CONFIG).open(resume=False)
    assert not out.exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda out: (out / MANIFEST).write_text('{"format": 2, "count": 2, "fi'), "unreadable"),
        (lambda out: (out / MANIFEST).write_text(json.dumps({"format": 2, "count": 1, "files": ["../../etc/x.pt"],
                                                              "config": CONFIG, "progress": {}})), "../../etc/x.pt"),
        (lambda out: (out / MANIFEST).write_text(json.dumps({"format": 1, "count": 1, "files": ["checkpoint-r0-1.pt"],
                                                              "config": CONFIG, "progress": {}})), "not a synthgrad"),
        (lambda out: (out / MANIFEST).write_text(json.dumps({"format": 2, "count": 1, "files": ["checkpoint-r0-1.pt",
                                                              "checkpoint-r1-1.pt"], "config": CONFIG,
                                                              "progress": {}})), "2 rank(s)"),
    ],
    ids=["truncated", "outside the folder", "another format", "another world size"],
)  # fmt: skip
def test_a_bad_manifest_is_one_line(tmp_path, damage, needle) -> None:
    out = tmp_path / "run"
    finished(out)
    damage(out)
    with pytest.raises(ConfigError, match="checkpoint.json|rank") as info:
        RunFolder(out, CONFIG, resumable={"epochs", "out"}).open(resume=True)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_folder_holding_a_run_needs_resume_and_the_same_config(tmp_path) -> None:
    out = tmp_path / "run"
    finished(out)
    with pytest.raises(ConfigError, match="already holds a run"):
        RunFolder(out, CONFIG).open(resume=False)
    with pytest.raises(ConfigError, match="method: 'dni' -> 'cdni'"):
        RunFolder(out, {**CONFIG, "method": "cdni"}, resumable={"epochs", "out"}).open(resume=True)


def test_out_that_is_a_file_or_unwritable_is_one_line(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunFolder(tmp_path / "file", CONFIG).open(resume=False)
    blocked = tmp_path / "file" / "run"  # a folder cannot be made under a file
    run = RunFolder(blocked, CONFIG)
    run.open(resume=False)
    with pytest.raises(ConfigError, match="cannot write to --out"):
        run.start()


def test_a_run_of_the_older_format_is_named(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"epoch": 1}, out / "checkpoint.pt")
    with pytest.raises(ConfigError, match="older synthgrad"):
        RunFolder(out, CONFIG).open(resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        RunFolder(out, CONFIG).open(resume=False)
