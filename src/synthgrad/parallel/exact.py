"""The exact-gradient baselines the decoupled pipeline is measured against, as jobs of the training loop.

Every rank builds the whole model from the config's seed and derives the same batch order, so no labels travel;
each trains its part with Adam (fused, as every synthgrad module), which equals one Adam over the whole model.
Evaluation gathers the parts on rank 0 (`training.evaluate.evaluate_across`), outside the training time.

    ModelParallelJob    synchronous (locked) model-parallel backprop: stage k waits for stage k−1's activations
                        and for stage k+1's gradient; the result equals single-process backprop, batch norm too
    DDPJob              DistributedDataParallel: rank r trains a replica on the r-th 1/K slice of each batch
    TorchPipelineJob    torch.distributed.pipelining's schedules (synthgrad/parallel/torch_pipelines.py)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from synthgrad.optim import adam
from synthgrad.parallel.runtime import Runtime
from synthgrad.training.chain_job import first_nonfinite, state_tensors
from synthgrad.training.evaluate import evaluate_across
from synthgrad.training.task import Task


def stage_module(full: nn.Sequential, layers: range) -> nn.Sequential:
    """The children `layers` of `full` (shared, not copied), keyed by their index in `full`: the stages' state
    dicts then merge into `full`'s."""
    return nn.Sequential(OrderedDict((str(i), full[i]) for i in layers))


@torch.no_grad()
def boundary_shapes(full: nn.Sequential, example: torch.Tensor) -> list[tuple[int, ...]]:
    """Per-example shape after each child of `full` on `example` inputs (eval mode: no statistics change)."""
    was, shapes, h = full.training, [], example
    full.eval()
    for child in full:
        h = child(h)
        shapes.append(tuple(h.shape[1:]))
    full.train(was)
    return shapes


class ExactJob:
    """What the exact-gradient baselines share: the whole model, this rank's part of it and its Adam."""

    def __init__(
        self, rt: Runtime, full: nn.Sequential, local: nn.Module, task: Task, lr: float, beta1: float = 0.9
    ) -> None:
        self.comm, self.full, self.local, self.task = rt, full, local, task
        self.optimizer = adam(lr, beta1)(local.parameters())
        self.x, self.y, self.loss_fn = task.train_x, task.train_y, task.loss_fn
        self.note = ""

    def evaluate_keys(self) -> tuple[str, ...]:
        return self.task.metrics

    def evaluate(self) -> dict[str, float]:
        part = self.local if self.local is not self.full else None
        return evaluate_across(self.comm, self.full, part, "", self.task.evaluate)

    def interval_metrics(self) -> dict[str, Any]:
        return {}

    def take_diagnostics(self) -> list[dict]:
        return []

    def settle(self) -> None:
        pass

    def training_state(self) -> dict:
        return {"model": self.local.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.local.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def check_finite(self) -> str | None:
        return first_nonfinite(state_tensors(self.local, [self.optimizer]))

    def report(self) -> dict[str, Any]:
        return {"stage": self.comm.rank, **self.comm.timing.as_dict(), "note": self.note,
                "threads": torch.get_num_threads()}  # fmt: skip


class ModelParallelJob(ExactJob):
    """Stage k of synchronous model-parallel backprop over the children `layers` of `full`."""

    def __init__(
        self, rt: Runtime, full: nn.Sequential, layers: range, task: Task, lr: float, beta1: float = 0.9
    ) -> None:
        super().__init__(rt, full, stage_module(full, layers), task, lr, beta1)
        self.first, self.last = rt.rank == 0, rt.rank == rt.world_size - 1
        self.in_shape = None if self.first else boundary_shapes(full, task.example)[layers.start - 1]
        self.note = f"stage {rt.rank}: layers {layers.start}..{layers.stop - 1}"

    def step(self, indices: torch.Tensor) -> float | None:
        rt, k = self.comm, self.comm.rank
        received = None if self.first else rt.recv((len(indices), *self.in_shape), k - 1, 1)
        inp = self.x[indices] if self.first else received.requires_grad_()
        loss = None
        with rt.timing.measure("compute"):
            out = self.local(inp)
            self.optimizer.zero_grad()
            if self.last:
                loss = self.loss_fn(out, self.y[indices])
                loss.backward()
        if not self.last:
            rt.wait(rt.isend(out.detach(), k + 1, 1), k + 1)
            grad = rt.recv(tuple(out.shape), k + 1, 2)
            with rt.timing.measure("compute"):
                out.backward(grad)
        if not self.first:
            rt.wait(rt.isend(inp.grad, k - 1, 2), k - 1)
        with rt.timing.measure("compute"):
            self.optimizer.step()
        return None if loss is None else loss.item()


class DDPJob(ExactJob):
    """Rank r of DistributedDataParallel: a full replica trained on the r-th 1/K slice of each batch, gradients
    averaged over ranks, the same lr (so samples/s compare with the other methods). Batch norm normalises each
    slice with its own statistics (no SyncBatchNorm), and DDP broadcasts rank 0's running statistics."""

    def __init__(
        self, rt: Runtime, full: nn.Sequential, task: Task, lr: float, batch_size: int, beta1: float = 0.9
    ) -> None:
        if batch_size % rt.world_size:
            raise ValueError(f"batch size {batch_size} is not a multiple of {rt.world_size} ranks")
        self.ddp = DistributedDataParallel(full)
        super().__init__(rt, full, full, task, lr, beta1)
        self.share = batch_size // rt.world_size
        self.note = f"{rt.world_size} replicas, {self.share} examples each per step"

    def step(self, indices: torch.Tensor) -> float:
        r, timing = self.comm.rank, self.comm.timing
        mine = indices[r * self.share : (r + 1) * self.share]
        with timing.measure("compute"):
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.ddp(self.x[mine]), self.y[mine])
        with timing.measure("comm"):  # the backward pass with DDP's bucketed all-reduce overlapped
            loss.backward()
        with timing.measure("compute"):
            self.optimizer.step()
        return loss.item()
