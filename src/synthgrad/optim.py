"""Optimizer factories: every module, synthesizer and baseline builds its optimizer through one of these."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def adam(lr: float) -> OptimizerFactory:
    """Adam (the paper's optimizer, PAPER.md §2) at `lr`, fused into one kernel per step.

    The fused implementation is the same update; on CPU it is ~6× faster than the per-tensor loop (8.6 → 1.3 ms
    for 2.9M parameters, one thread), which matters when a stage's own work is what a pipeline divides.
    """

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, fused=True)

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
    (0 + g = g) and saves an allocation per parameter per step.
    """
    if optimizer is None:
        return
    if update:
        optimizer.step()
    optimizer.zero_grad(set_to_none=False)
