"""The exact-gradient baselines as jobs of the one training loop: model-parallel backprop and DDP over 2 gloo ranks
on loopback equal single-process backprop; the layer split's edge cases; bad shapes fail before communicating.

One 2-process run (module fixture) trains every baseline in turn through `fit`; each test checks its own part.
(torch's pipeline schedules have their own tests: test_torch_pipelines.py.)
"""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from synthgrad.config import TrainConfig
from synthgrad.data import ImageDataset
from synthgrad.optim import adam
from synthgrad.parallel.exact import DDPJob, ModelParallelJob
from synthgrad.parallel.partition import split_layers
from synthgrad.parallel.runtime import Runtime
from synthgrad.training import Plan, RunFolder, batch_order, classification, fit, model_of

CFG = TrainConfig(layers=3, width=16, epochs=1, batch_size=32, lr=1e-2, seed=3).resolve()  # 8 steps, 256 examples
SHAPE = (1, 8, 8)
PLAN = Plan(epochs=1, batch_size=32, seed=3, examples=256, eval_every=4, target=100.0)


def fake_data() -> ImageDataset:
    g = torch.Generator().manual_seed(11)
    return ImageDataset(
        train_images=torch.rand(256, *SHAPE, generator=g),
        train_labels=torch.randint(0, 10, (256,), generator=g),
        test_images=torch.rand(64, *SHAPE, generator=g),
        test_labels=torch.randint(0, 10, (64,), generator=g),
        num_classes=10,
        name="fake",
    )


def fcn() -> nn.Sequential:
    return model_of(CFG, SHAPE, 10)


def bn_free() -> nn.Sequential:
    """A 3-layer model without batch norm: slices and micro-batches then give the whole batch's gradient."""
    torch.manual_seed(CFG.seed)
    return nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()),
        nn.Sequential(nn.Linear(16, 16), nn.Tanh()),
        nn.Linear(16, 10),
    )


def single(model: nn.Sequential, microbatches: int = 1) -> dict:
    """The reference: single-process backprop on the same batches, the gradient accumulated over micro-batches."""
    data, opt = fake_data(), adam(CFG.lr)(model.parameters())
    order = batch_order(PLAN.seed, 1, PLAN.examples)
    for s in range(PLAN.steps_per_epoch):
        idx = order[s * 32 : (s + 1) * 32]
        opt.zero_grad()
        for chunk in idx.chunk(microbatches):
            (F.cross_entropy(model(data.train_images[chunk]), data.train_labels[chunk]) / microbatches).backward()
        opt.step()
    return model.state_dict()


def jobs(rt: Runtime, data: ImageDataset) -> dict:
    layers = split_layers(3, rt.world_size)[rt.rank]
    task = classification(data, 256, conditioned=False)
    return {
        "model_parallel": lambda: ModelParallelJob(rt, fcn(), layers, task, CFG.lr),
        "ddp": lambda: DDPJob(rt, bn_free(), task, CFG.lr, 32),
        "ddp_bn": lambda: DDPJob(rt, fcn(), task, CFG.lr, 32),
    }


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        rt, data, results = Runtime(rank, world_size, torch.device("cpu")), fake_data(), {}
        for name, make in jobs(rt, data).items():
            job = make()
            run = RunFolder(Path(out) / name, {"name": name}, collective=rt)
            run.open(resume=False)
            run.start()
            summary = fit(job, run, PLAN)
            run.close()
            results[name] = {"summary": summary, "state": job.full.state_dict(), "history": run.progress.history}
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter finalisation: gloo's threads can abort it ([Note: stage exit] in cli.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every baseline's results, one dict per rank, from one 2-process gloo run (killed after 120 s)."""
    out = tmp_path_factory.mktemp("baselines")
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank baseline run hung for 120 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def _max_diff(a: dict, b: dict, params_only: bool = False) -> float:
    assert a.keys() == b.keys()
    keys = [k for k in a if not (params_only and ("running_" in k or "num_batches" in k))]
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


def _check_summary(results: list[dict], name: str) -> None:
    s0, s1 = results[0][name]["summary"], results[1][name]["summary"]
    assert s0["steps"] == 8 and s0["epochs"] == 1
    assert math.isfinite(s0["samples_per_s"]) and s0["samples_per_s"] > 0
    assert 0.0 <= s0["test_error"] <= 100.0
    history = results[0][name]["history"]
    assert s0["time_to_target_s"] == history[0]["train_time_s"]  # target 100% is met at the first evaluation
    assert [h["step"] for h in history] == [4, 8]
    assert math.isfinite(s0["train_loss"]) and s0["train_loss"] > 0
    for key in ("samples_per_s", "test_error", "train_loss", "train_time_s"):  # the ranks agree
        assert s0[key] == s1[key], key
    assert [p["stage"] for p in s0["per_stage"]] == [0, 1]


def test_model_parallel_equals_single_process_backprop(distributed: list[dict]) -> None:
    _check_summary(distributed, "model_parallel")
    reference = single(fcn())
    merged = {**distributed[0]["model_parallel"]["state"]}  # rank 0's model holds every stage after evaluation
    assert _max_diff(merged, reference) <= 1e-6  # batch norm included: each stage sees the whole batch
    assert _max_diff(merged, fcn().state_dict()) > 1e-3  # it trained
    timing = distributed[1]["model_parallel"]["summary"]["per_stage"][1]
    assert timing["compute_s"] > 0 and timing["comm_s"] > 0 and timing["wait_s"] > 0


def test_ddp_equals_single_process_backprop_without_batch_norm(distributed: list[dict]) -> None:
    _check_summary(distributed, "ddp")
    assert _max_diff(distributed[0]["ddp"]["state"], single(bn_free())) <= 1e-6


def test_ddp_ranks_train_on_their_own_slices(distributed: list[dict]) -> None:
    """With batch norm each rank normalises its half: the parameters then equal single-process accumulation over
    the two halves (running statistics differ: DDP keeps rank 0's), not whole-batch backprop."""
    _check_summary(distributed, "ddp_bn")
    ddp = distributed[0]["ddp_bn"]["state"]
    assert _max_diff(ddp, single(fcn(), microbatches=2), params_only=True) <= 1e-6
    assert _max_diff(ddp, single(fcn()), params_only=True) > 1e-4


@pytest.mark.parametrize(
    ("n", "k", "sizes"),
    [(1, 1, [1]), (6, 1, [6]), (6, 6, [1] * 6), (6, 4, [1, 1, 2, 2]), (5, 2, [2, 3]), (7, 3, [2, 2, 3])],
)
def test_split_layers_is_contiguous_and_balanced(n: int, k: int, sizes: list[int]) -> None:
    stages = split_layers(n, k)
    assert [len(r) for r in stages] == sizes
    assert [i for r in stages for i in r] == list(range(n))


@pytest.mark.parametrize(("n", "k"), [(3, 4), (0, 1), (3, 0)])
def test_split_layers_rejects_impossible_splits(n: int, k: int) -> None:
    with pytest.raises(ValueError, match="stage"):
        split_layers(n, k)


def test_ddp_batch_not_divisible_is_rejected_before_any_communication() -> None:
    """No process group exists here: the error must come before the first collective."""
    rt = Runtime(0, 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="multiple of 3 ranks"):
        DDPJob(rt, bn_free(), classification(fake_data(), 256, conditioned=False), CFG.lr, 32)
