"""The multi-process runtime: equal to the in-process reference in lockstep, bounded staleness, faults, torchrun.

Every job here runs real processes on 127.0.0.1 with gloo, one torch thread each, on a small fake MNIST.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import checkpoint_of, write_fake_mnist
from synthgrad.checkpoint import load_checkpoint
from synthgrad.config import Method, TrainConfig
from synthgrad.core import one_hot_context
from synthgrad.data import load_dataset
from synthgrad.decoupled import infer_shapes
from synthgrad.parallel.launch import _watch
from synthgrad.parallel.partition import cuts_of, split_layers
from synthgrad.pipeline import LocalExecutor
from synthgrad.schedule import DecoupledSchedule
from synthgrad.training import batch_order, build_network

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
SMALL = ["--layers", "4", "--width", "16", "--batch-size", "32", "--threads", "1", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("pdata"), n_train=320, n_test=64)


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthgrad.cli", *map(str, args)],
        env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def reference(data: Path, method: str, stages: int, epochs: int, staleness: int | None = None, **extra) -> list:
    """The in-process run, same batches, same seed, cut at the same stage boundaries: `train_step` in lockstep, or
    with `staleness` the same schedule run by `LocalExecutor`. Returns the stages."""
    torch.set_num_threads(1)
    cfg = TrainConfig(data_dir=str(data), layers=4, width=16, batch_size=32, seed=3, method=Method(method), **extra)
    cfg = cfg.resolve()
    ds = load_dataset("mnist", data)
    net = build_network(cfg, ds.input_shape, ds.num_classes, cuts=cuts_of(split_layers(4, stages)))
    step = net.train_step
    if staleness is not None:
        schedule = DecoupledSchedule(stages, staleness, net.rule, unlock=net.unlocked)
        step = LocalExecutor(
            list(net.stages), schedule, infer_shapes(net.blocks, ds.train_images[:2]), (1, 28, 28)
        ).tick
    for epoch in range(1, epochs + 1):
        order = batch_order(3, epoch, len(ds.train_labels))
        for s in range(len(ds.train_labels) // 32):
            idx = order[s * 32 : (s + 1) * 32]
            y = ds.train_labels[idx]
            step(ds.train_images[idx], y, one_hot_context(y, 10) if method == "cdni" else None)
    return list(net.stages)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def stage_state(out: Path, k: int) -> dict:
    return checkpoint_of(out, k)[1]["job"]["stage"]["module"]


@pytest.mark.parametrize(
    ("method", "stages", "extra_args", "extra_cfg"),
    [
        ("cdni", 2, ["--update-prob", "0.7"], {"update_prob": 0.7}),
        ("cdni", 3, [], {}),
        ("dni", 2, ["--synthesizer-hidden", "32"], {"synthesizer_hidden": (32,)}),
        ("cdni", 2, ["--unlock", "full"], {"unlock": "full"}),
        ("dni", 4, ["--fold-every", "1"], {"fold_every": 1}),
        ("cdni", 3, ["--fold-every", "2"], {"fold_every": 2}),
    ],
    ids=["cdni-2-p0.7", "cdni-3", "dni-2", "cdni-2-unlock", "dni-4-fold1", "cdni-3-fold2"],
)
def test_lockstep_equals_in_process(data, tmp_path, method, stages, extra_args, extra_cfg) -> None:
    out = tmp_path / "run"
    r = cli("parallel", "--stages", stages, "--method", method, "--max-staleness", 0, "--data-dir", data,
            "--epochs", 2, "--out", out, *SMALL, *extra_args)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"results in {out}" in r.stdout  # rank 0's last line, flushed before its hard exit ([Note: stage exit])
    want = reference(data, method, stages, 2, **extra_cfg)
    for k in range(stages):
        assert max_diff(stage_state(out, k), want[k].state_dict()) <= 1e-6
    summary = json.loads((out / "summary.json").read_text())
    assert all(s["max_staleness_seen"] == 0 for s in summary["per_stage"])
    assert not (out / "checkpoint-r0-1.pt").exists()  # older checkpoints are removed once a newer one is complete
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]  # as `train` writes them
    assert len(rows) == 2 and all(r["train_loss"] > 0 and 0 <= r["test_error"] <= 100 for r in rows)


@pytest.mark.parametrize(
    ("method", "stages", "staleness", "extra_args", "extra_cfg"),
    [
        ("dni", 2, 2, [], {}),
        ("cdni", 3, 1, ["--update-prob", "0.7"], {"update_prob": 0.7}),
        ("dni", 3, 2, ["--fold-every", "1"], {"fold_every": 1}),
        ("cdni", 3, 2, ["--unlock", "full"], {"unlock": "full"}),
        ("cdni", 3, 1, ["--target-every", "2"], {"target_every": 2}),
    ],
    ids=["dni-2-S2-fold3", "cdni-3-S1-p0.7", "dni-3-S2-fold1", "cdni-3-S2-unlock", "cdni-3-S1-targets2"],
)
def test_asynchronous_run_equals_the_in_process_executor(data, tmp_path, method, stages, staleness, extra_args,
                                                         extra_cfg) -> None:  # fmt: skip
    """Staleness S > 0: the K processes run concurrently, and still compute exactly what the same schedule computes
    in one process ([Note: bounded staleness]): the multi-process test checks the executor, not the maths."""
    out = tmp_path / "run"
    r = cli("parallel", "--stages", stages, "--method", method, "--max-staleness", staleness, "--data-dir", data,
            "--epochs", 2, "--out", out, *SMALL, *extra_args)  # fmt: skip
    assert r.returncode == 0, r.stderr
    want = reference(data, method, stages, 2, staleness=staleness, **extra_cfg)
    for k in range(stages):
        assert max_diff(stage_state(out, k), want[k].state_dict()) == 0.0, f"stage {k}"
    seen = [s["max_staleness_seen"] for s in json.loads((out / "summary.json").read_text())["per_stage"]]
    assert seen == [staleness] * (stages - 1) + [0]  # the top stage has no synthesizer
    lockstep = reference(data, method, stages, 2, **extra_cfg)
    assert max_diff(stage_state(out, 0), lockstep[0].state_dict()) > 1e-6  # staleness changes the numbers


def test_lockstep_differs_from_a_wrong_reference(data, tmp_path) -> None:
    """The comparison above can fail: another seed's in-process run is far from the parallel one."""
    out = tmp_path / "run"
    assert cli("parallel", "--stages", 2, "--method", "cdni", "--max-staleness", 0, "--data-dir", data,
               "--epochs", 1, "--out", out, *SMALL).returncode == 0  # fmt: skip
    want = reference(data, "cdni", 2, 2)  # one epoch more
    assert max_diff(stage_state(out, 0), want[0].state_dict()) > 1e-4


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the stage processes")
@pytest.mark.parametrize(("victim", "method"), [(1, "dni"), (0, "cdni")])
def test_killed_stage_stops_the_job_and_resume_continues(data, tmp_path, victim, method) -> None:
    out = tmp_path / "run"
    args = ["parallel", "--stages", 2, "--method", method, "--data-dir", data, "--out", out, *SMALL, "--epochs", 400]
    job = subprocess.Popen([sys.executable, "-m", "synthgrad.cli", *map(str, args)], env=ENV, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 90
    while not (out / "checkpoint.json").exists():
        assert job.poll() is None, job.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    stages = {_rank_of(c): c for c in _children(job.pid)}
    os.kill(stages[victim], signal.SIGKILL)
    t0 = time.monotonic()
    _, err = job.communicate(timeout=45)
    assert time.monotonic() - t0 < 30
    assert job.returncode != 0
    assert f"stage {victim} was killed by SIGKILL" in err
    assert "Traceback" not in err
    meta = json.loads((out / "checkpoint.json").read_text())
    for name in meta["files"]:
        load_checkpoint(out / name)  # intact
    done = meta["progress"]["epoch"]
    r = cli("parallel", "--stages", 2, "--method", method, "--data-dir", data, "--out", out, *SMALL,
            "--epochs", done + 1, "--resume")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "checkpoint.json").read_text())["progress"]["epoch"] == done + 1
    # The resumed run ends where an uninterrupted one does: stages, in-flight folds and targets all restored.
    whole = tmp_path / "whole"
    r = cli("parallel", "--stages", 2, "--method", method, "--data-dir", data, "--out", whole, *SMALL,
            "--epochs", done + 1)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for k in range(2):
        assert max_diff(stage_state(out, k), stage_state(whole, k)) == 0.0


class _Ended:
    """A stage process that has already ended with `code` (negative: killed by that signal)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code

    def kill(self) -> None:
        pass


@pytest.mark.parametrize("order", [(1, -9), (-9, 1)])
def test_launcher_names_the_stage_killed_by_a_signal(capsys, order) -> None:
    """Seen ending in the same poll, the killed stage is the cause and the stage that lost it the effect."""
    assert _watch([_Ended(c) for c in order]) == 1
    assert f"stage {order.index(-9)} was killed by SIGKILL" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(node: int, port: int, data: Path, out: Path, *extra: object) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "synthgrad.cli", "parallel", "--stages", "2", "--method", "cdni", "--data-dir", str(data),
           "--epochs", "1", "--out", str(out), *SMALL, *map(str, extra)]  # fmt: skip
    return subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(nodes: list[subprocess.Popen], timeout: float = 120) -> list[tuple[str, str]]:
    """Every node's (stdout, stderr); if one hangs, kill them all and fail with every node's output, so a hang
    (once seen in a full run: node 0 had finished and did not exit) says which node stopped where."""
    try:
        return [n.communicate(timeout=timeout) for n in nodes]
    except subprocess.TimeoutExpired:
        for n in nodes:
            n.kill()
        outputs = [n.communicate() for n in nodes]
        tails = "\n".join(f"node {i} rc={n.returncode}:\n{o[-2000:]}{e[-4000:]}"
                          for i, (n, (o, e)) in enumerate(zip(nodes, outputs, strict=True)))  # fmt: skip
        pytest.fail(f"a torchrun node did not exit within {timeout} s\n{tails}")


def test_two_torchrun_nodes_on_loopback(data, tmp_path) -> None:
    port = _free_port()
    nodes = [_torchrun(n, port, data, tmp_path / "run") for n in (0, 1)]
    results = _finish(nodes)
    for node, (_, err) in zip(nodes, results, strict=True):
        assert node.returncode == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"] == 2 and [s["stage"] for s in summary["per_stage"]] == [0, 1]


def test_mismatched_configs_between_ranks_fail_before_training(data, tmp_path) -> None:
    port = _free_port()
    nodes = [_torchrun(0, port, data, tmp_path / "run"), _torchrun(1, port, data, tmp_path / "run", "--lr", "0.5")]
    errs = [err for _, err in _finish(nodes)]
    assert all(n.returncode != 0 for n in nodes)
    assert any("different config" in e and "lr" in e for e in errs)
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_more_stages_than_layers_is_a_clear_error(data, tmp_path) -> None:
    r = cli("parallel", "--stages", 5, "--method", "cdni", "--data-dir", data, "--out", tmp_path / "o", *SMALL)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "more than the model's 4 layers" in r.stderr


def test_port_in_use_is_a_clear_error(data, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("parallel", "--stages", 2, "--method", "cdni", "--data-dir", data, "--out", tmp_path / "o",
                "--master-port", port, *SMALL)  # fmt: skip
    assert r.returncode == 2
    assert f"127.0.0.1:{port}" in r.stderr and r.stderr.strip().count("\n") == 0


def test_rendezvous_defaults_to_loopback() -> None:
    from synthgrad.parallel.config import ParallelConfig

    assert ParallelConfig(train=TrainConfig()).master_addr == "127.0.0.1"


@pytest.mark.parametrize("schedule", ["decoupled", "stale", "1f1b"])
def test_stop_at_target_ends_the_run_at_the_first_evaluation_that_reaches_it(data, tmp_path, schedule) -> None:
    # Accuracy 0 % is reached at the first evaluation (step 2 of 10 per epoch): the run ends there, on every rank.
    out = tmp_path / schedule
    r = cli("parallel", "--stages", 2, "--schedule", schedule, "--method", "backprop" if schedule != "decoupled"
            else "cdni", "--data-dir", data, "--out", out, *SMALL, "--epochs", 3, "--eval-every", 2,
            "--target-accuracy", 0, "--stop-at-target")  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["time_to_target_s"] is not None


def test_stop_at_target_without_a_target_is_a_clear_error(data, tmp_path) -> None:
    r = cli("parallel", "--stages", 2, "--data-dir", data, "--out", tmp_path / "o", *SMALL, "--stop-at-target")
    assert r.returncode == 2 and "--stop-at-target needs a target" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("staleness", [0, 1])
def test_link_emulation_changes_timing_not_numbers(data, tmp_path, staleness) -> None:
    """A held message arrives later, never in another order: with a fixed staleness bound the run computes the same
    numbers with and without a slow link ([Note: link emulation] in parallel/link.py)."""
    outs = {}
    for name, link in (("plain", []), ("slow", ["--link-delay-ms", 3, "--link-bandwidth", "100mbit"])):
        outs[name] = tmp_path / name
        r = cli("parallel", "--stages", 2, "--method", "cdni", "--max-staleness", staleness, "--data-dir", data,
                "--epochs", 1, "--out", outs[name], *SMALL, *link)  # fmt: skip
        assert r.returncode == 0, r.stderr
    slow = json.loads((outs["slow"] / "summary.json").read_text())
    assert slow["link_delay_ms"] == 3.0
    for k in range(2):
        assert max_diff(stage_state(outs["slow"], k), stage_state(outs["plain"], k)) == 0.0, f"stage {k}"
