"""PyTorch's own pipeline schedules (`torch.distributed.pipelining`) as baseline jobs of the training loop.

The model's layers are cut into contiguous *virtual stages* (`partition.split_layers`), `stages_per_rank(name)`
of them per rank: one for GPipe and 1F1B; two for the multi-stage schedules, placed in a loop (rank r holds
virtual stages r, r+K, …) for interleaved 1F1B, looped BFS and interleaved zero bubble, or in a V (rank r holds
r and 2K−1−r) for ZB-V and DualPipeV. A batch is split into micro-batches, the schedule runs their forward and
backward passes (split into input and weight gradients by the zero-bubble ones) across the stages, then every
rank steps its Adam once over all of its stages. The gradient is that of the batch-mean loss (`scale_grads=True`).
Batch norm normalises each micro-batch with its own statistics, so a pipeline equals single-process backprop
with gradient accumulation over the same micro-batches, not whole-batch backprop (BN-free models equal it up to
summation order); tests/test_torch_pipelines.py checks every schedule against that reference.

One trap, avoided by giving every stage its static input and output shapes: left to infer them, a stage runs an
extra training-mode forward at the first step (stage 0 on its first micro-batch, the others on uninitialised
`torch.empty` tensors), so batch-norm running statistics count one batch too many and, on later stages, become
garbage (measured: 1e27 / inf running means and variances after one epoch, and a wrong test error).

A rank's `local` module (its checkpoint, its part in evaluation) holds all of its virtual stages' layers keyed by
their index in the full model, so the ranks' state dicts merge into the full model's.

`check_schedule` names the constraint a configuration breaks (`ParallelConfig.validate` calls it before any
process starts); `schedule_error` runs a schedule on a tiny job and returns its error text, or None when it
trains, for a benchmark that must report a schedule that cannot run rather than skip it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from synthgrad.parallel.exact import ExactJob, boundary_shapes
from synthgrad.parallel.partition import split_layers
from synthgrad.parallel.runtime import Runtime
from synthgrad.training.task import Task

#: Micro-batches per batch, raised to the number of virtual stages where that is larger (1F1B and DualPipeV
#: need it).
DEFAULT_MICROBATCHES = 4
#: --schedule name: the torch class.
SCHEDULES = {
    "gpipe": "ScheduleGPipe",
    "1f1b": "Schedule1F1B",
    "interleaved-1f1b": "ScheduleInterleaved1F1B",
    "looped-bfs": "ScheduleLoopedBFS",
    "zero-bubble": "ScheduleInterleavedZeroBubble",
    "zbv": "ScheduleZBVZeroBubble",
    "dualpipev": "ScheduleDualPipeV",
}
SINGLE_STAGE = frozenset({"gpipe", "1f1b"})
V_SHAPED = frozenset({"zbv", "dualpipev"})  # torch's ZB-V and DualPipeV hold exactly 2 stages per rank
INTERLEAVED = frozenset({"interleaved-1f1b", "zero-bubble"})  # torch's "flex" rounds: M a multiple of max(1, M // K)


def stages_per_rank(name: str) -> int:
    """Virtual stages each rank holds under schedule `name`."""
    return 1 if name in SINGLE_STAGE else 2


def placement(name: str, rank: int, ranks: int, per_rank: int | None = None) -> list[int]:
    """The virtual stages rank `rank` of `ranks` holds, in ascending order: a loop (r, r+K, …) or, for the V
    schedules, r and 2K−1−r."""
    v = per_rank or stages_per_rank(name)
    if name in V_SHAPED:
        return sorted({rank, 2 * ranks - 1 - rank})
    return [rank + j * ranks for j in range(v)]


def default_microbatches(name: str, ranks: int, per_rank: int | None = None) -> int:
    return max(DEFAULT_MICROBATCHES, ranks * (per_rank or stages_per_rank(name)))


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_schedule(
    name: str, ranks: int, layers: int, batch_size: int, microbatches: int | None, *, batchnorm: bool,
    per_rank: int | None = None,
) -> None:  # fmt: skip
    """Raise ValueError naming the constraint that schedule `name` on `ranks` ranks, a model of `layers` layers,
    batches of `batch_size` and `microbatches` micro-batches (None: the default) breaks."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown torch pipeline schedule {name!r} (one of {', '.join(SCHEDULES)})")
    v = per_rank or stages_per_rank(name)
    if name in SINGLE_STAGE and v != 1:
        raise ValueError(f"{name} holds one stage per rank, got {v}")
    if name in V_SHAPED and v != 2:
        raise ValueError(f"a V schedule holds exactly 2 virtual stages per rank (torch's {SCHEDULES[name]}), got {v}")
    if v < 1:
        raise ValueError(f"need at least 1 virtual stage per rank, got {v}")
    n = ranks * v
    if n > layers:
        raise ValueError(
            f"{ranks} ranks × {v} virtual stages = {n} stages need at least {n} layers, the model has {layers}"
        )
    mb = microbatches or default_microbatches(name, ranks, v)
    if mb > batch_size:
        raise ValueError(f"{mb} micro-batches need at least {mb} examples per batch, got --batch-size {batch_size}")
    if batch_size % mb:
        raise ValueError(f"batch size {batch_size} is not a multiple of {mb} micro-batches")
    if batchnorm and batch_size // mb < 2:
        raise ValueError(f"batch norm needs micro-batches of >= 2 examples: {batch_size} / {mb} < 2")
    if name == "1f1b" and mb < ranks:
        raise ValueError(f"1F1B needs at least as many micro-batches as stages ({mb} < {ranks})")
    if name == "dualpipev" and mb < n:
        raise ValueError(f"DualPipeV needs at least as many micro-batches as virtual stages ({mb} < {n})")
    rounds = max(1, mb // ranks)
    if name in INTERLEAVED and mb % rounds:
        raise ValueError(
            f"{name} runs micro-batches in rounds of max(1, M // K) = {rounds}: {mb} micro-batches is not a multiple "
            f"(use a multiple of {ranks} ranks)"
        )


def stage_modules(full: nn.Sequential, blocks: list[range]) -> nn.Sequential:
    """The children of `full` in `blocks` (shared, not copied), keyed by their index in `full`; a rank's state
    dict then merges into `full`'s. Only a container: its children are not a chain."""
    return nn.Sequential(OrderedDict((str(i), full[i]) for block in blocks for i in block))


class TorchPipelineJob(ExactJob):
    """Rank `rt.rank` of `full` under torch's schedule `name` with `microbatches` (None: the default) per batch of
    `batch_size`, holding `per_rank` virtual stages (None: the schedule's)."""

    def __init__(
        self, rt: Runtime, full: nn.Sequential, task: Task, lr: float, *, name: str, batch_size: int,
        microbatches: int | None = None, per_rank: int | None = None, beta1: float = 0.9,
    ) -> None:  # fmt: skip
        from torch.distributed import pipelining

        k, K = rt.rank, rt.world_size
        v = per_rank or stages_per_rank(name)
        bn = has_batchnorm(full)
        check_schedule(name, K, len(full), batch_size, microbatches, batchnorm=bn, per_rank=v)
        mb = microbatches or default_microbatches(name, K, v)
        n = K * v
        blocks = split_layers(len(full), n)
        mine = placement(name, k, K, v)
        super().__init__(rt, full, stage_modules(full, [blocks[s] for s in mine]), task, lr, beta1)
        self.first, self.last = 0 in mine, n - 1 in mine  # the data enters at stage 0, the loss at stage n − 1
        shapes, micro = boundary_shapes(full, task.example), batch_size // mb
        stages = []
        for s in mine:
            layers = blocks[s]
            in_shape = task.input_shape if s == 0 else shapes[layers.start - 1]
            # requires_grad marks what carries a gradient: every output; every input but the data's.
            dtype = task.train_x.dtype if s == 0 else torch.get_default_dtype()
            example_in = torch.zeros(micro, *in_shape, dtype=dtype, requires_grad=s > 0)
            example_out = torch.zeros(micro, *shapes[layers.stop - 1], requires_grad=True)
            module = nn.Sequential(OrderedDict((str(i), full[i]) for i in layers))
            stages.append(
                pipelining.PipelineStage(module, s, n, rt.device, input_args=example_in, output_args=example_out)
            )
        schedule_cls = getattr(pipelining, SCHEDULES[name])
        # Torch's own checks (a ValueError) reach the user as a one-line config error (worker.make_job).
        self.schedule = schedule_cls(stages[0] if v == 1 else stages, mb, loss_fn=task.loss_fn, scale_grads=True)
        self.microbatches, self.virtual_stages = mb, mine
        held = "; ".join(f"stage {s}: layers {blocks[s].start}..{blocks[s].stop - 1}" for s in mine)
        self.note = (
            f"torch.distributed.pipelining {schedule_cls.__name__}, {mb} micro-batches of {micro}, {n} stages; "
            f"rank {k}: {held}" + ("; batch norm normalises each micro-batch with its own statistics" if bn else "")
        )

    def step(self, indices: torch.Tensor) -> float | None:
        losses: list[torch.Tensor] = []
        self.optimizer.zero_grad()
        with self.comm.timing.measure("compute"):  # compute, transfers and bubbles: the schedule hides them
            x, y = self.x[indices], self.y[indices]
            args = (x,) if self.first else ()
            if self.last:
                self.schedule.step(*args, target=y, losses=losses, return_outputs=False)
            else:
                self.schedule.step(*args, return_outputs=False)
            self.optimizer.step()
        return sum(loss.item() for loss in losses) / len(losses) if losses else None


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")


def schedule_error(
    name: str, *, ranks: int = 2, microbatches: int | None = None, layers: int = 4, width: int = 16,
    batch_size: int = 32, timeout_s: float = 180.0, extra_args: tuple[str, ...] = (),
) -> str | None:  # fmt: skip
    """Train schedule `name` for one epoch of a tiny job (fake data, `ranks` processes on 127.0.0.1, one thread
    each); None if it runs, else its error text (the exception's line from the stages' output, or the job's last
    error line), for a benchmark that must report a schedule that cannot run here instead of skipping it."""
    from synthgrad.data import write_idx

    with tempfile.TemporaryDirectory(prefix="synthgrad-probe-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        gen = torch.Generator().manual_seed(0)
        for prefix, count in (("train", 4 * batch_size), ("t10k", batch_size)):
            images = torch.randint(0, 256, (count, 28, 28), generator=gen, dtype=torch.uint8).numpy()
            labels = torch.randint(0, 10, (count,), generator=gen, dtype=torch.uint8).numpy()
            write_idx(data / f"{prefix}-images-idx3-ubyte", images, gzip=False)
            write_idx(data / f"{prefix}-labels-idx1-ubyte", labels, gzip=False)
        args = ["parallel", "--method", "backprop", "--schedule", name, "--stages", str(ranks), "--data-dir",
                str(data), "--out", str(Path(tmp) / "run"), "--layers", str(layers), "--width", str(width),
                "--batch-size", str(batch_size), "--epochs", "1", "--threads", "1", "--no-progress",
                *(["--microbatches", str(microbatches)] if microbatches else []), *extra_args]  # fmt: skip
        src = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:
            r = subprocess.run([sys.executable, "-m", "synthgrad.cli", *args], env=env, capture_output=True,
                               text=True, timeout=timeout_s)  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"no result within {timeout_s:.0f} s (a hang?)"
    if r.returncode == 0:
        return None
    lines = [line.strip() for line in r.stderr.splitlines() if line.strip()]
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return found[-1] if found else (lines[-1] if lines else f"exit code {r.returncode}, no output")
