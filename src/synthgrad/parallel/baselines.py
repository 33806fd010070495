"""The baselines DNI's parallel pipeline is measured against (issue 3): exact-gradient training, one way or another.

Every ``run_<name>(cfg, *, rank, world_size, data, target_error, log_every, ...)`` runs inside an already
initialised ``torch.distributed`` process group (gloo, CPU) -- except `run_backprop_single`, which needs none -- and
returns a metrics dict:

- ``samples_per_s``: training samples per second of pure training time (evaluation excluded);
- ``time_to_target_s``: training seconds until the test error first reached ``<= target_error`` (None if never);
  the test error is measured every ``eval_every`` steps (0, the default: only at the end of every epoch);
- ``final_test_error`` (%), ``epochs``, ``steps``, ``train_s``, ``train_loss`` (mean over the last evaluation
  interval), ``history`` (one row per evaluation), ``method``, ``note``;
- ``timing``: this rank's seconds: ``compute_s``, ``wait_s`` (blocked on a peer), ``comm_s`` (sending), None where
  they cannot be told apart, plus method-specific entries.

Canonical result: rank 0's. All ranks return the same metrics (training time is agreed as the max over ranks and
the test error is broadcast from rank 0), each with its own ``timing``; only rank 0's holds ``state_dict`` (the
assembled model, with ``keep_state=True``). Training time runs from a barrier to a barrier closing each
evaluation interval, so it counts the slowest rank.

Every rank builds the whole model from ``torch.manual_seed(cfg.seed)`` and derives the same batch order per epoch
(as ``synthgrad.train``), so no labels travel. Evaluation gathers the stages' state dicts on rank 0, which
assembles the model and tests it (outside the training time). Optimizer: `adam` per stage (fused), which equals
one Adam over the whole model. Denormals are flushed during a run (PAPER.md §8), as in ``synthgrad.train``.

Pipelining (`run_pipeline_gpipe`, `run_pipeline_1f1b`) is PyTorch's own ``torch.distributed.pipelining``
(``PipelineStage`` + ``ScheduleGPipe`` / ``Schedule1F1B``): it runs on CPU with gloo in torch 2.13 as it is.
One trap, avoided here by giving every stage its static input/output shapes: left to infer them, a stage runs an
extra training-mode forward at the first step (stage 0 on its first micro-batch, the others on uninitialised
``torch.empty`` tensors), so batch-norm running statistics count one batch too many and, on later stages, become
garbage (measured: 1e27 / inf running means and variances after one epoch, and a wrong test error).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from synthgrad.config import TrainConfig
from synthgrad.data import ImageDataset
from synthgrad.decoupled import adam
from synthgrad.models import cnn, fcn
from synthgrad.runs import flush_denormals
from synthgrad.train import evaluate

log = logging.getLogger("synthgrad.parallel.baselines")

ModelBuilder = Callable[[], nn.Sequential]
#: Micro-batches per batch for the pipelines, raised to the number of stages where that is larger (1F1B needs it).
DEFAULT_MICROBATCHES = 4


def split_layers(n_layers: int, k: int) -> list[range]:
    """Cut ``n_layers`` layers into ``k`` contiguous stages whose sizes differ by at most one.

    The last ``n_layers % k`` stages get the extra layer: an FCN's output layer is small, so the last stage is the
    one that can best take one more. Raises ValueError if ``k > n_layers`` or either is < 1.
    """
    if n_layers < 1 or k < 1:
        raise ValueError(f"need at least 1 layer and 1 stage, got {n_layers} layer(s) and {k} stage(s)")
    if k > n_layers:
        raise ValueError(
            f"cannot split {n_layers} layer(s) into {k} stages: every stage needs at least one layer "
            f"(use at most {n_layers} stages, or more layers)"
        )
    base, extra = divmod(n_layers, k)
    stages, start = [], 0
    for i in range(k):
        size = base + (1 if i >= k - extra else 0)
        stages.append(range(start, start + size))
        start += size
    return stages


def build_model(cfg: TrainConfig, data: ImageDataset, model: ModelBuilder | None = None) -> nn.Sequential:
    """The model of ``cfg`` (or ``model()``), seeded with ``cfg.seed`` so that every rank builds the same one."""
    torch.manual_seed(cfg.seed)
    if model is not None:
        return model()
    if cfg.model == "cnn":
        return cnn(data.input_shape, data.num_classes, layers=cfg.layers, channels=cfg.model_width())
    return fcn(data.input_shape, data.num_classes, layers=cfg.layers, width=cfg.model_width())


def stage_module(full: nn.Sequential, layers: range) -> nn.Sequential:
    """The children ``layers`` of ``full`` (shared, not copied), keyed by their index in ``full``: the stages'
    state dicts then merge into ``full``'s."""
    return nn.Sequential(OrderedDict((str(i), full[i]) for i in layers))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def _boundary_shapes(full: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-example shape after each child of ``full`` (eval mode: no batch-norm statistics change)."""
    was, shapes, h = full.training, [], torch.zeros(2, *input_shape)
    full.eval()
    for child in full:
        h = child(h)
        shapes.append(tuple(h.shape[1:]))
    full.train(was)
    return shapes


def _check_group(rank: int, world_size: int) -> None:
    if not dist.is_initialized():
        raise RuntimeError("this baseline runs inside an initialised torch.distributed process group")
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise ValueError(
            f"rank/world_size {rank}/{world_size} disagree with the process group's "
            f"{dist.get_rank()}/{dist.get_world_size()}"
        )


def _clock(timing: dict) -> Callable[[str], AbstractContextManager[None]]:
    """``with clock(key):`` adds the seconds spent inside to ``timing[key]``."""

    @contextmanager
    def clock(key: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            timing[key] = (timing.get(key) or 0.0) + time.perf_counter() - t

    return clock


def _evaluate(full: nn.Sequential, local: nn.Module | None, data: ImageDataset, rank: int, world_size: int) -> float:
    """Test error of the assembled model, agreed on every rank. ``local``: this rank's stage, gathered on rank 0
    into ``full`` (None: rank 0's ``full`` is already up to date, as in DDP)."""
    if world_size == 1 and not dist.is_initialized():
        return evaluate(full, data.test_images, data.test_labels)[0]
    if local is not None and world_size > 1:
        states: list | None = [None] * world_size if rank == 0 else None
        dist.gather_object({k: v.detach() for k, v in local.state_dict().items()}, states, dst=0)
        if rank == 0:
            merged: dict = {}
            for s in states:
                merged.update(s)
            full.load_state_dict(merged)
    err = torch.zeros(1, dtype=torch.float64)
    if rank == 0:
        err[0] = evaluate(full, data.test_images, data.test_labels)[0]
    dist.broadcast(err, src=0)
    return err.item()


@dataclass(frozen=True)
class _Job:
    """What every baseline's loop needs besides its own step."""

    name: str
    cfg: TrainConfig
    data: ImageDataset
    rank: int
    world_size: int
    target_error: float | None
    log_every: int
    eval_every: int
    keep_state: bool


@flush_denormals()
def _train(
    job: _Job, full: nn.Sequential, step: Callable[[torch.Tensor], float | None], evaluate: Callable[[], float],
    *, loss_share: float, timing: dict, note: str,
) -> dict:  # fmt: skip
    """The loop shared by every baseline. ``step(batch_indices)`` trains on one global batch and returns its loss
    where this rank knows it; ``loss_share`` weighs that loss in the all-rank sum (1 on the last stage, 1/K in
    DDP, 0 elsewhere); ``evaluate()`` returns the test error agreed by all ranks."""
    cfg, data, rank, world_size, name = job.cfg, job.data, job.rank, job.world_size, job.name
    target_error, log_every, eval_every = job.target_error, job.log_every, job.eval_every
    distributed = dist.is_initialized() and world_size > 1
    clock = _clock(timing)
    n = len(data.train_labels) if cfg.train_limit is None else min(cfg.train_limit, len(data.train_labels))
    steps_per_epoch = n // cfg.batch_size  # drop the ragged last batch: batch norm needs B >= 2
    if steps_per_epoch < 1:
        raise ValueError(f"{n} training examples make no batch of {cfg.batch_size}")
    history: list[dict] = []
    train_s, steps, to_target, loss_sum, loss_n = 0.0, 0, None, 0.0, 0
    if distributed:
        dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        for s in range(steps_per_epoch):
            loss = step(order[s * cfg.batch_size : (s + 1) * cfg.batch_size])
            steps += 1
            if loss is not None:
                loss_sum, loss_n = loss_sum + loss, loss_n + 1
                if log_every and steps % log_every == 0:
                    log.info("%s rank %d epoch %d step %d: loss %.4f", name, rank, epoch, steps, loss)
            if not ((eval_every and steps % eval_every == 0) or s == steps_per_epoch - 1):
                continue
            if distributed:
                with clock("wait_s"):
                    dist.barrier()  # the interval ends when the slowest rank is done
            train_s += time.perf_counter() - t0
            mean_loss = loss_sum / loss_n * loss_share if loss_n else 0.0
            if distributed:
                agreed = torch.tensor([train_s, mean_loss], dtype=torch.float64)
                dist.all_reduce(agreed[:1], op=dist.ReduceOp.MAX)
                dist.all_reduce(agreed[1:], op=dist.ReduceOp.SUM)
                train_s, mean_loss = agreed.tolist()
            error = evaluate()
            history.append(
                {"epoch": epoch, "step": steps, "train_s": train_s, "train_loss": mean_loss, "test_error": error}
            )
            log.info("%s rank %d step %d: test error %.2f%% after %.1fs training", name, rank, steps, error, train_s)
            if to_target is None and target_error is not None and error <= target_error:
                to_target = train_s
            loss_sum, loss_n = 0.0, 0
            if distributed:
                dist.barrier()
            t0 = time.perf_counter()
    result = {
        "method": name,
        "samples_per_s": steps * cfg.batch_size / train_s if train_s > 0 else None,
        "time_to_target_s": to_target,
        "target_error": target_error,
        "final_test_error": history[-1]["test_error"],
        "train_loss": history[-1]["train_loss"],
        "epochs": cfg.epochs,
        "steps": steps,
        "train_s": train_s,
        "eval_every": eval_every,
        "world_size": world_size,
        "history": history,
        "timing": timing,
        "note": note,
    }
    if job.keep_state and rank == 0:
        result["state_dict"] = {k: v.detach().clone() for k, v in full.state_dict().items()}
    return result


def run_backprop_single(
    cfg: TrainConfig, *, rank: int = 0, world_size: int = 1, data: ImageDataset, target_error: float | None,
    log_every: int = 0, eval_every: int = 0, model: ModelBuilder | None = None, microbatches: int = 1,
    keep_state: bool = False,
) -> dict:  # fmt: skip
    """Plain backprop in this process, with the threads the caller set; needs no process group.

    Runs on rank 0 only: another rank returns at once with the metrics None. ``microbatches > 1`` accumulates the
    gradient over that many equal micro-batches per batch (each loss / micro-batches), the reference the
    pipelines equal (batch norm then normalises per micro-batch, as in a pipeline)."""
    if rank != 0:
        keys = ("samples_per_s", "time_to_target_s", "final_test_error", "epochs", "steps")
        return dict.fromkeys(keys) | {"method": "backprop_single", "timing": {}, "note": "runs on rank 0 only"}
    if cfg.batch_size % microbatches:
        raise ValueError(f"batch size {cfg.batch_size} is not a multiple of {microbatches} micro-batches")
    full = build_model(cfg, data, model)
    opt = adam(cfg.module_lr())(full.parameters())
    x_all, y_all = data.train_images, data.train_labels

    def step(idx: torch.Tensor) -> float:
        opt.zero_grad()
        total = 0.0
        for chunk in idx.chunk(microbatches):
            loss = F.cross_entropy(full(x_all[chunk]), y_all[chunk])
            (loss / microbatches).backward()
            total += loss.item() / microbatches
        opt.step()
        return total

    timing: dict = {"compute_s": None, "wait_s": 0.0, "comm_s": 0.0}
    result = _train(
        _Job("backprop_single", cfg, data, 0, 1, target_error, log_every, eval_every, keep_state), full, step,
        lambda: evaluate(full, data.test_images, data.test_labels)[0], loss_share=1.0, timing=timing,
        note=f"{torch.get_num_threads()} thread(s)",
    )  # fmt: skip
    timing["compute_s"] = result["train_s"]
    return result


def run_model_parallel(
    cfg: TrainConfig, *, rank: int, world_size: int, data: ImageDataset, target_error: float | None,
    log_every: int = 0, eval_every: int = 0, model: ModelBuilder | None = None, keep_state: bool = False,
) -> dict:  # fmt: skip
    """Synchronous (locked) model-parallel backprop: one stage of contiguous layers per rank.

    Stage k blocks in ``dist.recv`` for stage k-1's activations, forwards, sends them on; the last stage computes
    the loss and sends dL/d(input) back; every stage backprops what it receives, sends its input gradient upstream,
    then steps its own Adam. Each stage sees the whole batch, so the result equals `run_backprop_single` (batch
    norm included). timing: ``compute_s`` (forward, backward, step), ``wait_s`` (blocking receives, which include
    the transfer, and the end-of-interval barriers), ``comm_s`` (blocking sends)."""
    full = build_model(cfg, data, model)
    layers = split_layers(len(full), world_size)[rank]
    _check_group(rank, world_size)
    local = stage_module(full, layers)
    first, last = rank == 0, rank == world_size - 1
    shapes = _boundary_shapes(full, data.input_shape)
    in_shape = None if first else shapes[layers.start - 1]
    opt = adam(cfg.module_lr())(local.parameters())
    x_all, y_all = data.train_images, data.train_labels
    timing: dict = {"compute_s": 0.0, "wait_s": 0.0, "comm_s": 0.0}
    clock = _clock(timing)

    def step(idx: torch.Tensor) -> float | None:
        if first:
            inp = x_all[idx]
        else:
            inp = torch.empty(len(idx), *in_shape)
            with clock("wait_s"):
                dist.recv(inp, src=rank - 1)
            inp.requires_grad_()
        loss = None
        with clock("compute_s"):
            out = local(inp)
            opt.zero_grad()
            if last:
                loss = F.cross_entropy(out, y_all[idx])
                loss.backward()
        if not last:
            with clock("comm_s"):
                dist.send(out.detach().contiguous(), dst=rank + 1)
            grad = torch.empty_like(out)
            with clock("wait_s"):
                dist.recv(grad, src=rank + 1)
            with clock("compute_s"):
                out.backward(grad)
        if not first:
            with clock("comm_s"):
                dist.send(inp.grad.contiguous(), dst=rank - 1)
        with clock("compute_s"):
            opt.step()
        return None if loss is None else loss.item()

    return _train(
        _Job("backprop_model_parallel", cfg, data, rank, world_size, target_error, log_every, eval_every, keep_state),
        full, step, lambda: _evaluate(full, local, data, rank, world_size), loss_share=1.0 if last else 0.0,
        timing=timing, note=f"stage {rank}: layers {layers.start}..{layers.stop - 1}",
    )  # fmt: skip


def _run_pipeline(job: _Job, model: ModelBuilder | None, microbatches: int | None) -> dict:
    cfg, data, rank, world_size, schedule_name = job.cfg, job.data, job.rank, job.world_size, job.name[9:]
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    full = build_model(cfg, data, model)
    layers = split_layers(len(full), world_size)[rank]
    mb = microbatches or max(DEFAULT_MICROBATCHES, world_size)
    if cfg.batch_size % mb:
        raise ValueError(f"batch size {cfg.batch_size} is not a multiple of {mb} micro-batches")
    if _has_batchnorm(full) and cfg.batch_size // mb < 2:
        raise ValueError(f"batch norm needs micro-batches of >= 2 examples: {cfg.batch_size} / {mb} < 2")
    if schedule_name == "1f1b" and mb < world_size:
        raise ValueError(f"1F1B needs at least as many micro-batches as stages ({mb} < {world_size})")
    _check_group(rank, world_size)
    local = stage_module(full, layers)
    first, last = rank == 0, rank == world_size - 1
    # Static shapes: without them the stage infers them at the first step by running an extra training-mode
    # forward (on uninitialised memory for all but the first stage), which corrupts batch-norm running statistics.
    shapes, micro = _boundary_shapes(full, data.input_shape), cfg.batch_size // mb
    in_shape = data.input_shape if first else shapes[layers.start - 1]
    # requires_grad marks what carries a gradient: every output; every input but the data's.
    example_in = torch.zeros(micro, *in_shape, requires_grad=not first)
    example_out = torch.zeros(micro, *shapes[layers.stop - 1], requires_grad=True)
    stage = PipelineStage(local, rank, world_size, torch.device("cpu"), input_args=example_in, output_args=example_out)
    schedule_cls = ScheduleGPipe if schedule_name == "gpipe" else Schedule1F1B
    # scale_grads=True: each micro-batch's mean loss is backpropagated and the sum divided by `mb`, i.e. the
    # gradient of the batch-mean loss, as the other baselines take.
    schedule = schedule_cls(stage, mb, loss_fn=F.cross_entropy, scale_grads=True)
    opt = adam(cfg.module_lr())(local.parameters())
    x_all, y_all = data.train_images, data.train_labels
    timing: dict = {"compute_s": None, "wait_s": 0.0, "comm_s": None, "schedule_s": 0.0, "optimizer_s": 0.0}
    clock = _clock(timing)

    def step(idx: torch.Tensor) -> float | None:
        losses: list[torch.Tensor] = []
        opt.zero_grad()
        with clock("schedule_s"):
            if first and last:
                schedule.step(x_all[idx], target=y_all[idx], losses=losses)
            elif first:
                schedule.step(x_all[idx])
            elif last:
                schedule.step(target=y_all[idx], losses=losses)
            else:
                schedule.step()
        with clock("optimizer_s"):
            opt.step()
        return sum(loss.item() for loss in losses) / len(losses) if losses else None

    note = (
        f"torch.distributed.pipelining {schedule_cls.__name__}, {mb} micro-batches of {cfg.batch_size // mb}; "
        f"stage {rank}: layers {layers.start}..{layers.stop - 1}"
        + ("; batch norm normalises each micro-batch with its own statistics" if _has_batchnorm(full) else "")
    )
    result = _train(
        job, full, step, lambda: _evaluate(full, local, data, rank, world_size), loss_share=1.0 if last else 0.0,
        timing=timing, note=note,
    )  # fmt: skip
    result["microbatches"] = mb
    timing["note"] = "schedule_s holds compute, p2p transfers and bubbles together: the schedule hides them"
    return result


def run_pipeline_gpipe(
    cfg: TrainConfig, *, rank: int, world_size: int, data: ImageDataset, target_error: float | None,
    log_every: int = 0, eval_every: int = 0, model: ModelBuilder | None = None, microbatches: int | None = None,
    keep_state: bool = False,
) -> dict:  # fmt: skip
    """Pipelined backprop, PyTorch's ``ScheduleGPipe``: all micro-batches forward, then all backward, then one
    Adam step per stage. ``microbatches`` (default max(4, K)) must divide the batch. Batch norm computes its
    statistics per micro-batch (equal to `run_backprop_single(microbatches=...)`, not to whole-batch backprop);
    BN-free models equal whole-batch backprop up to summation order."""
    job = _Job("pipeline_gpipe", cfg, data, rank, world_size, target_error, log_every, eval_every, keep_state)
    return _run_pipeline(job, model, microbatches)


def run_pipeline_1f1b(
    cfg: TrainConfig, *, rank: int, world_size: int, data: ImageDataset, target_error: float | None,
    log_every: int = 0, eval_every: int = 0, model: ModelBuilder | None = None, microbatches: int | None = None,
    keep_state: bool = False,
) -> dict:  # fmt: skip
    """Pipelined backprop, PyTorch's ``Schedule1F1B`` (one forward, one backward in the steady state); otherwise
    as `run_pipeline_gpipe`. Needs micro-batches >= K."""
    job = _Job("pipeline_1f1b", cfg, data, rank, world_size, target_error, log_every, eval_every, keep_state)
    return _run_pipeline(job, model, microbatches)


def run_ddp(
    cfg: TrainConfig, *, rank: int, world_size: int, data: ImageDataset, target_error: float | None,
    log_every: int = 0, eval_every: int = 0, model: ModelBuilder | None = None, keep_state: bool = False,
) -> dict:  # fmt: skip
    """DistributedDataParallel (gloo): rank r trains a full replica on the r-th 1/K slice of each global batch of
    ``cfg.batch_size`` (so samples/s compare with the other methods), gradients averaged over ranks, same lr.

    BN-free models equal whole-batch backprop; batch norm normalises each slice with its own statistics (no
    SyncBatchNorm) and DDP broadcasts rank 0's running statistics at every forward. timing: ``compute_s``
    (forward + Adam step), ``backward_allreduce_s`` (backward with DDP's bucketed all-reduce overlapped: not
    separable), ``wait_s`` (end-of-interval barriers)."""
    if cfg.batch_size % world_size:
        raise ValueError(f"batch size {cfg.batch_size} is not a multiple of {world_size} ranks")
    full = build_model(cfg, data, model)
    _check_group(rank, world_size)
    ddp = DistributedDataParallel(full)
    opt = adam(cfg.module_lr())(ddp.parameters())
    x_all, y_all = data.train_images, data.train_labels
    share = cfg.batch_size // world_size
    timing: dict = {"compute_s": 0.0, "wait_s": 0.0, "comm_s": None, "backward_allreduce_s": 0.0}
    clock = _clock(timing)

    def step(idx: torch.Tensor) -> float:
        mine = idx[rank * share : (rank + 1) * share]
        with clock("compute_s"):
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x_all[mine]), y_all[mine])
        with clock("backward_allreduce_s"):
            loss.backward()
        with clock("compute_s"):
            opt.step()
        return loss.item()

    return _train(
        _Job("ddp", cfg, data, rank, world_size, target_error, log_every, eval_every, keep_state), full, step,
        lambda: _evaluate(full, None, data, rank, world_size), loss_share=1.0 / world_size, timing=timing,
        note=f"{world_size} replicas, {share} examples each per step",
    )  # fmt: skip
