"""The language model as K = 2 decoupled stages in separate processes, and the exact baselines on it: the
asynchronous run equals the same schedule in one process (`LocalExecutor`), model-parallel backprop equals
single-process backprop, and the stale pipeline and a torch schedule train it. Real processes on 127.0.0.1 (gloo,
one thread each) on the small Penn Treebank of test_lm.py. The default run checks DNI's pipeline (~10 s); the rest
is behind --runslow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import checkpoint_of
from synthgrad.config import Method, TrainConfig
from synthgrad.decoupled import infer_shapes
from synthgrad.parallel.partition import cuts_of, split_layers
from synthgrad.pipeline import LocalExecutor
from synthgrad.schedule import DecoupledSchedule
from synthgrad.training import batch_order, build_network
from synthgrad.training.lm import load_lm
from test_lm import TINY, B, T, write_small_ptb

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
STEPS = 14  # into the second epoch of the small corpus (12 steps of 8 windows)


@pytest.fixture(scope="module")
def ptb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_ptb(tmp_path_factory.mktemp("small_ptb_parallel"))


def parallel(data: Path, out: Path, *args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "synthgrad.cli", "parallel", "--stages", "2", *TINY, "--data-dir", str(data),
           "--out", str(out), "--max-tokens", str(STEPS * B * T), *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180, cwd=REPO)


def reference(data: Path, method: str, staleness: int) -> list:
    """The same schedule in this process, on the same batches (the loop's batch order over the windows)."""
    torch.set_num_threads(1)
    cfg = TrainConfig(dataset="ptb-char", model="gpt", data_dir=str(data), layers=2, width=16, heads=2, context=T,
                      batch_size=B, seed=1, method=Method(method), modules=2).validate().resolve()  # fmt: skip
    task = load_lm(cfg).task(conditioned=method == "cdni")
    net = build_network(cfg, task.input_shape, task.num_classes, cuts=cuts_of(split_layers(cfg.model_layers, 2)))
    schedule = DecoupledSchedule(2, staleness, net.rule, unlock=False)
    executor = LocalExecutor(list(net.stages), schedule, infer_shapes(net.blocks, task.example), task.input_shape)
    per_epoch = len(task.train_y) // B
    for step in range(STEPS):
        epoch, s = divmod(step, per_epoch)
        executor.tick(*task.batch(batch_order(1, epoch + 1, len(task.train_y))[s * B : (s + 1) * B]))
    return list(net.stages)


@pytest.mark.parametrize(
    ("method", "staleness"), [("dni", 1), pytest.param("cdni", 2, marks=pytest.mark.slow)], ids=["dni-S1", "cdni-S2"]
)
def test_pipelined_gpt_equals_the_in_process_executor(ptb, tmp_path, method, staleness) -> None:
    out = tmp_path / "run"
    r = parallel(ptb, out, "--method", method, "--max-staleness", staleness, "--eval-tokens", 4 * B * T)
    assert r.returncode == 0, r.stderr
    assert "bits/char after 1,792 tokens" in r.stdout
    want = reference(ptb, method, staleness)
    for k in range(2):
        got = checkpoint_of(out, k)[1]["job"]["stage"]["module"]
        assert got.keys() == want[k].state_dict().keys()
        assert all(torch.equal(v, want[k].state_dict()[n]) for n, v in got.items()), f"stage {k}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"] == STEPS * B * T and [s["max_staleness_seen"] for s in summary["per_stage"]] == [
        staleness, 0]  # fmt: skip
    assert (out / "vocab.json").is_file()


@pytest.mark.slow
def test_model_parallel_gpt_equals_single_process_backprop(ptb, tmp_path) -> None:
    runs = {}
    for schedule in ("model-parallel", "single"):
        r = parallel(ptb, tmp_path / schedule, "--method", "backprop", "--schedule", schedule)
        assert r.returncode == 0, r.stderr
        runs[schedule] = json.loads((tmp_path / schedule / "summary.json").read_text())
    assert runs["model-parallel"]["valid_bpc"] == pytest.approx(runs["single"]["valid_bpc"], abs=1e-5)
    single = checkpoint_of(tmp_path / "single")[1]["job"]["stages"][0]["module"]
    parts = {**checkpoint_of(tmp_path / "model-parallel", 0)[1]["job"]["model"],
             **checkpoint_of(tmp_path / "model-parallel", 1)[1]["job"]["model"]}  # fmt: skip
    assert {f"block.{k}" for k in parts} == set(single)
    assert max((parts[k] - single[f"block.{k}"]).abs().max().item() for k in parts) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["stale", "1f1b"])
def test_baselines_train_the_gpt(ptb, tmp_path, schedule) -> None:
    r = parallel(ptb, tmp_path / schedule, "--method", "backprop", "--schedule", schedule)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / schedule / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["valid_bpc"] < 5.0  # from log2(V) = 5.6 at the start
