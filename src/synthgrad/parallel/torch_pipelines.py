"""PyTorch's own pipeline schedules (`torch.distributed.pipelining`) as baseline jobs of the training loop.

Each rank holds one stage of contiguous layers; a batch is split into micro-batches and the schedule runs their
forward and backward passes across the stages, then every stage steps its Adam once. The gradient is that of the
batch-mean loss (`scale_grads=True`). Batch norm normalises each micro-batch with its own statistics, so a
pipeline equals single-process backprop with gradient accumulation over the same micro-batches, not whole-batch
backprop (BN-free models equal it up to summation order).

One trap, avoided by giving every stage its static input and output shapes: left to infer them, a stage runs an
extra training-mode forward at the first step (stage 0 on its first micro-batch, the others on uninitialised
`torch.empty` tensors), so batch-norm running statistics count one batch too many and, on later stages, become
garbage (measured: 1e27 / inf running means and variances after one epoch, and a wrong test error).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthgrad.data import ImageDataset
from synthgrad.parallel.exact import ExactJob, boundary_shapes, stage_module
from synthgrad.parallel.runtime import Runtime

#: Micro-batches per batch, raised to the number of stages where that is larger (1F1B needs it).
DEFAULT_MICROBATCHES = 4
SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B"}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_microbatches(name: str, batch_size: int, microbatches: int, stages: int, batchnorm: bool) -> None:
    """Raise ValueError naming the constraint a schedule's micro-batching breaks."""
    if batch_size % microbatches:
        raise ValueError(f"batch size {batch_size} is not a multiple of {microbatches} micro-batches")
    if batchnorm and batch_size // microbatches < 2:
        raise ValueError(f"batch norm needs micro-batches of >= 2 examples: {batch_size} / {microbatches} < 2")
    if name == "1f1b" and microbatches < stages:
        raise ValueError(f"1F1B needs at least as many micro-batches as stages ({microbatches} < {stages})")


class TorchPipelineJob(ExactJob):
    """Stage `rt.rank` of `full` (layers `layers`) under torch's schedule `name` with `microbatches`."""

    def __init__(
        self, rt: Runtime, full: nn.Sequential, layers: range, data: ImageDataset, lr: float, *, name: str,
        batch_size: int, microbatches: int | None = None,
    ) -> None:  # fmt: skip
        from torch.distributed import pipelining

        k, K = rt.rank, rt.world_size
        mb = microbatches or max(DEFAULT_MICROBATCHES, K)
        check_microbatches(name, batch_size, mb, K, has_batchnorm(full))
        super().__init__(rt, full, stage_module(full, layers), data, lr)
        self.first, self.last = k == 0, k == K - 1
        shapes, micro = boundary_shapes(full, data.input_shape), batch_size // mb
        in_shape = data.input_shape if self.first else shapes[layers.start - 1]
        # requires_grad marks what carries a gradient: every output; every input but the data's.
        example_in = torch.zeros(micro, *in_shape, requires_grad=not self.first)
        example_out = torch.zeros(micro, *shapes[layers.stop - 1], requires_grad=True)
        stage = pipelining.PipelineStage(
            self.local, k, K, torch.device("cpu"), input_args=example_in, output_args=example_out
        )
        schedule_cls = getattr(pipelining, SCHEDULES[name])
        self.schedule = schedule_cls(stage, mb, loss_fn=F.cross_entropy, scale_grads=True)
        self.microbatches = mb
        self.note = (
            f"torch.distributed.pipelining {schedule_cls.__name__}, {mb} micro-batches of {micro}; stage {k}: "
            f"layers {layers.start}..{layers.stop - 1}"
            + ("; batch norm normalises each micro-batch with its own statistics" if has_batchnorm(full) else "")
        )

    def step(self, indices: torch.Tensor) -> float | None:
        losses: list[torch.Tensor] = []
        self.optimizer.zero_grad()
        with self.comm.timing.measure("compute"):  # compute, transfers and bubbles: the schedule hides them
            x, y = self.x[indices], self.y[indices]
            if self.first and self.last:
                self.schedule.step(x, target=y, losses=losses)
            elif self.first:
                self.schedule.step(x)
            elif self.last:
                self.schedule.step(target=y, losses=losses)
            else:
                self.schedule.step()
            self.optimizer.step()
        return sum(loss.item() for loss in losses) / len(losses) if losses else None
