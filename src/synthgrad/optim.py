"""Optimizer factories: every module, synthesizer and baseline builds its optimizer through one of these."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.optim.adam import adam as adam_update

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def adam(lr: float, beta1: float = 0.9) -> OptimizerFactory:
    """Adam (the paper's optimizer, PAPER.md §2) at `lr`, fused into one kernel per step; `beta1` is the decay of
    its first moment (`--beta1`; torch's 0.9 by default, which every recipe keeps: [Note: GPT recipe] in config.py).

    The fused implementation is the same update; on CPU it is ~6× faster than the per-tensor loop (8.6 → 1.3 ms
    for 2.9M parameters, one thread), which matters when a stage's own work is what a pipeline divides.
    """

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=True)

    return make


def rmsprop(lr: float) -> OptimizerFactory:
    """RMSProp at `lr` as NTM-era recurrent recipes ran it: decay α = 0.95 of the mean square, momentum 0.9,
    ε = 1e-4 (`torch.optim.RMSprop`, not centred, ε outside the square root). Graves (2013, eq. 38–41), which the
    NTM paper cites, uses the centred form with its 1e-4 inside the root; this is the simpler form most
    reimplementations use (e.g. pytorch-ntm: RMSprop(lr=1e-4, momentum=0.9, alpha=0.95)). Recurrent runs'
    `--optimizer rmsprop`."""

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=lr, alpha=0.95, eps=1e-4, momentum=0.9)

    return make


def optimizer_or_none(params: Iterable[nn.Parameter], factory: OptimizerFactory) -> torch.optim.Optimizer | None:
    """`factory` over the trainable `params`, or None when there are none (an oracle, a parameter-free layer)."""
    params = [p for p in params if p.requires_grad]
    return factory(params) if params else None


def step_and_clear(optimizer: torch.optim.Optimizer | None, update: bool = True) -> None:
    """Apply the accumulated gradient if `update` (update decoupling skips some), then zero it in place.

    In place rather than to None: the next backward pass accumulates into the same buffers, which is exact
    (0 + g = g) and saves an allocation per parameter per step. Inside `batched_steps` an update is queued and
    applied when the scope closes ([Note: batched optimizer steps]).
    """
    if optimizer is None:
        return
    if update and _QUEUES:
        queue = _QUEUES[-1]
        if any(optimizer is queued for queued in queue):
            raise RuntimeError(
                "an optimizer stepped twice in one batched_steps scope: its second gradient was "
                "accumulated onto the first, which is not applied yet"
            )
        queue.append(optimizer)
        return
    if update:
        optimizer.step()
    optimizer.zero_grad(set_to_none=False)


# [Note: batched optimizer steps]
#   A decoupled chain run in lockstep in one process (`DecoupledSequential.train_step`) makes one optimizer step
#   per module and per synthesizer that trained: 2N − 1 small steps for N modules, each paying Python and dispatch
#   costs that dwarf the arithmetic of a 256-wide layer (~0.1 ms each on this machine's CPU, about as much as
#   the whole backprop step's optimizer). Within one lockstep step, nothing reads a module's or a synthesizer's
#   weights after its own update: the module above runs on a detached activation computed before it, a folded
#   batch's later backward pass uses its stashed snapshot, and every module and synthesizer is next used by the
#   *next* step. So the updates can wait for the end of the step and run together: `batched_steps` queues them
#   and applies every fused Adam with the same hyper-parameters in one fused call (`torch.optim.adam.adam`, the
#   kernel `Adam.step` itself calls), then zeroes the gradients in one call. The numbers are the same bit for bit
#   (Adam is elementwise per tensor; tests/test_optim.py). Anything else (another optimizer, an Adam whose state
#   is not made yet, i.e. its first step) takes its own `step()` in queue order. The contract of the scope: no
#   gradient reaches a queued optimizer's parameters before the scope closes; a second step of the same
#   optimizer (whose gradient would have been added to the first) is an error. The multi-process runtime never
#   batches: there each stage's update is what lets the next step start.
_QUEUES: list[list[torch.optim.Optimizer]] = []  # the open `batched_steps` scopes, innermost last


@contextlib.contextmanager
def batched_steps() -> Iterator[None]:
    """Queue the updates `step_and_clear` makes inside the scope and apply them together when it closes (also
    when it closes on an exception, as the unbatched steps would have been made), see [Note: batched optimizer
    steps]."""
    queue: list[torch.optim.Optimizer] = []
    _QUEUES.append(queue)
    try:
        yield
    finally:
        _QUEUES.pop()
        _apply(queue)


_FUSED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")


def _fusable(optimizer: torch.optim.Optimizer) -> bool:
    """A fused Adam with every state made and nothing the plain fused call does not cover."""
    if type(optimizer) is not torch.optim.Adam:
        return False
    for group in optimizer.param_groups:
        if not group.get("fused") or group["amsgrad"] or group["maximize"] or group["capturable"]:
            return False
        if group["differentiable"] or torch.is_tensor(group["lr"]):
            return False
        if any(p.grad is not None and p not in optimizer.state for p in group["params"]):
            return False
    return True


def _apply(queue: list[torch.optim.Optimizer]) -> None:
    """Run the queued updates (grouped where fusable), zero their gradients, empty the queue."""
    batches: dict[tuple, tuple[list, ...]] = {}
    for optimizer in queue:
        if not _fusable(optimizer):
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            continue
        for group in optimizer.param_groups:
            key = tuple(group[k] if k != "betas" else tuple(group[k]) for k in _FUSED_GROUP_KEYS)
            lists = batches.setdefault(key, ([], [], [], [], []))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = optimizer.state[p]
                tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
                for values, t in zip(lists, tensors, strict=True):
                    values.append(t)
    queue.clear()
    for (lr, (beta1, beta2), eps, weight_decay, decoupled), (params, grads, avgs, sqs, steps) in batches.items():
        if not params:  # every parameter of these groups without a gradient (e.g. ĝ = 0): Adam skips them
            continue
        with torch.no_grad():
            adam_update(
                params,
                grads,
                avgs,
                sqs,
                [],
                steps,
                fused=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=lr,
                weight_decay=weight_decay,
                eps=eps,
                maximize=False,
                decoupled_weight_decay=decoupled,
            )
            torch._foreach_zero_(grads)
