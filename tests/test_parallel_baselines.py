"""The parallel baselines (synthgrad.parallel.baselines): model-parallel, DDP and PyTorch pipelining over 2 gloo
ranks on loopback equal single-process backprop, and split_layers' edge cases.

One 2-process run (module fixture) trains every distributed baseline in turn; each test checks its own part.
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
from torch import nn

from synthgrad.config import TrainConfig
from synthgrad.data import ImageDataset
from synthgrad.parallel import baselines as B

CFG = TrainConfig(layers=3, width=16, epochs=1, batch_size=32, lr=1e-2, seed=3)  # 8 steps on 256 examples
SHAPE = (1, 8, 8)


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


def bn_free() -> nn.Sequential:
    """A 3-layer model without batch norm: slices and micro-batches then give the whole batch's gradient."""
    return nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()),
        nn.Sequential(nn.Linear(16, 16), nn.Tanh()),
        nn.Linear(16, 10),
    )


# name -> (function, keyword arguments); fcn (with batch norm) unless model=bn_free
RUNS = {
    "model_parallel": (B.run_model_parallel, {}),
    "ddp": (B.run_ddp, {"model": bn_free}),
    "ddp_bn": (B.run_ddp, {}),
    "gpipe": (B.run_pipeline_gpipe, {"microbatches": 4}),
    "1f1b": (B.run_pipeline_1f1b, {"microbatches": 4}),
    "gpipe_bn_free": (B.run_pipeline_gpipe, {"model": bn_free, "microbatches": 4}),
}


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        data, results = fake_data(), {}
        for name, (fn, kwargs) in RUNS.items():
            results[name] = fn(
                CFG, rank=rank, world_size=world_size, data=data, target_error=100.0, log_every=0, eval_every=4,
                keep_state=True, **kwargs,
            )  # fmt: skip
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip interpreter finalisation: with torch 2.13 + gloo, a worker sometimes aborts after its results are
    # written and the group destroyed ("terminate called without an active exception", no Python frame left;
    # intermittent: 11 of 38 runs in one hour here, 0 of 32 in the next). An error above still propagates.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every distributed baseline's results, one dict per rank, from one 2-process gloo run (killed after 120 s)."""
    out = tmp_path_factory.mktemp("baselines")
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank baseline run hung for 120 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def _single(**kwargs) -> dict:
    return B.run_backprop_single(CFG, data=fake_data(), target_error=100.0, eval_every=4, keep_state=True, **kwargs)


def _max_diff(a: dict, b: dict, params_only: bool = False) -> float:
    assert a.keys() == b.keys()
    keys = [k for k in a if not (params_only and ("running_" in k or "num_batches" in k))]
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


def _check_metrics(results: list[dict], name: str) -> None:
    r0, r1 = results[0][name], results[1][name]
    assert r0["steps"] == 8 and r0["epochs"] == 1
    assert math.isfinite(r0["samples_per_s"]) and r0["samples_per_s"] > 0
    assert 0.0 <= r0["final_test_error"] <= 100.0
    assert r0["time_to_target_s"] == r0["history"][0]["train_s"]  # target 100% is met at the first evaluation
    assert [h["step"] for h in r0["history"]] == [4, 8]
    assert math.isfinite(r0["train_loss"]) and r0["train_loss"] > 0
    for key in ("samples_per_s", "final_test_error", "train_loss"):  # the ranks agree
        assert r0[key] == r1[key], key
    assert "state_dict" in r0 and "state_dict" not in r1


def test_model_parallel_equals_single_process_backprop(distributed: list[dict]) -> None:
    single = _single()
    _check_metrics(distributed, "model_parallel")
    mp_state = distributed[0]["model_parallel"]["state_dict"]
    assert _max_diff(mp_state, single["state_dict"]) <= 1e-6  # batch norm included: each stage sees the whole batch
    initial = B.build_model(CFG, fake_data()).state_dict()
    assert _max_diff(mp_state, initial) > 1e-3  # it trained
    assert distributed[0]["model_parallel"]["final_test_error"] == single["final_test_error"]
    timing = distributed[1]["model_parallel"]["timing"]
    assert timing["compute_s"] > 0 and timing["comm_s"] > 0 and timing["wait_s"] > 0


def test_ddp_equals_single_process_backprop_without_batch_norm(distributed: list[dict]) -> None:
    single = _single(model=bn_free)
    _check_metrics(distributed, "ddp")
    assert _max_diff(distributed[0]["ddp"]["state_dict"], single["state_dict"]) <= 1e-6
    assert distributed[0]["ddp"]["final_test_error"] == single["final_test_error"]


def test_ddp_ranks_train_on_their_own_slices(distributed: list[dict]) -> None:
    """With batch norm each rank normalises its half: the parameters then equal single-process accumulation over
    the two halves (running statistics differ: DDP keeps rank 0's), not whole-batch backprop."""
    _check_metrics(distributed, "ddp_bn")
    ddp = distributed[0]["ddp_bn"]["state_dict"]
    assert _max_diff(ddp, _single(microbatches=2)["state_dict"], params_only=True) <= 1e-6
    assert _max_diff(ddp, _single()["state_dict"], params_only=True) > 1e-4


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_pipelines_equal_micro_batch_accumulation(distributed: list[dict], name: str) -> None:
    """torch.distributed.pipelining on CPU/gloo: batch norm normalises each micro-batch, so the reference is
    single-process backprop accumulating the gradient over the same 4 micro-batches."""
    _check_metrics(distributed, name)
    assert distributed[0][name]["microbatches"] == 4
    reference = _single(microbatches=4)
    assert _max_diff(distributed[0][name]["state_dict"], reference["state_dict"]) <= 1e-5
    assert _max_diff(reference["state_dict"], _single()["state_dict"]) > 1e-4  # micro-batch BN makes a difference


def test_pipeline_without_batch_norm_equals_whole_batch_backprop(distributed: list[dict]) -> None:
    _check_metrics(distributed, "gpipe_bn_free")
    single = _single(model=bn_free)
    assert _max_diff(distributed[0]["gpipe_bn_free"]["state_dict"], single["state_dict"]) <= 1e-5


@pytest.mark.parametrize(
    ("n", "k", "sizes"),
    [(1, 1, [1]), (6, 1, [6]), (6, 6, [1] * 6), (6, 4, [1, 1, 2, 2]), (5, 2, [2, 3]), (7, 3, [2, 2, 3])],
)
def test_split_layers_is_contiguous_and_balanced(n: int, k: int, sizes: list[int]) -> None:
    stages = B.split_layers(n, k)
    assert [len(r) for r in stages] == sizes
    assert [i for r in stages for i in r] == list(range(n))


@pytest.mark.parametrize(("n", "k"), [(3, 4), (0, 1), (3, 0)])
def test_split_layers_rejects_impossible_splits(n: int, k: int) -> None:
    with pytest.raises(ValueError, match="stage"):
        B.split_layers(n, k)


def test_bad_shapes_are_rejected_before_any_communication() -> None:
    """No process group exists here: each error must come before the first collective."""
    data = fake_data()
    kw = {"data": data, "target_error": None, "log_every": 0}
    with pytest.raises(ValueError, match="3 layer"):
        B.run_model_parallel(CFG, rank=0, world_size=4, **kw)
    with pytest.raises(ValueError, match="multiple of 3 ranks"):
        B.run_ddp(CFG, rank=0, world_size=3, **kw)
    with pytest.raises(ValueError, match="micro-batches"):
        B.run_pipeline_gpipe(CFG, rank=0, world_size=2, microbatches=5, **kw)
    with pytest.raises(ValueError, match=">= 2 examples"):
        B.run_pipeline_1f1b(CFG, rank=0, world_size=2, microbatches=32, **kw)
    with pytest.raises(RuntimeError, match="process group"):
        B.run_model_parallel(CFG, rank=0, world_size=2, **kw)
