"""Forward passes whose graph outlives the weights they used: weight stashing, frozen buffers, and rebuilding.

A folded batch ([Note: folding in true gradients] in stage.py) keeps its forward graph until its true gradient
arrives, several optimizer steps later; the backward pass must then see the weights that forward pass used
(PipeDream's weight stashing). `stashed_weights` takes a snapshot of the module's parameters and buffers and
makes the graph save the snapshot instead of the live tensors. The snapshot is plain data, so a checkpoint can
hold it and `rebuild` can recompute the same graph after a restart (exact resume).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def named_state(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Every parameter and buffer of `module`, by name."""
    yield from module.named_parameters()
    yield from module.named_buffers()


@contextlib.contextmanager
def frozen_buffers(module: nn.Module) -> Iterator[None]:
    """Run forward passes that leave every buffer (batch-norm running statistics) exactly as it was."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


@contextlib.contextmanager
def stashed_weights(module: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Forward passes whose graphs save a snapshot of every parameter and buffer instead of the live tensor.

    Yields the snapshot (name -> copy, as the forward pass used it). The graph can then be back-propagated after
    the optimizer (or the next forward pass, for batch-norm running statistics) has changed the module in place:
    the gradient is the one at the snapshot's weights, and it still accumulates into the live parameters'
    `.grad`. Costs one copy of the module's weights; activations are saved as usual.
    """
    live = dict(named_state(module))
    snapshot = {name: t.detach().clone() for name, t in live.items()}
    by_id = {id(t): snapshot[name] for name, t in live.items()}

    def pack(t: Tensor) -> Tensor:
        base = t._base if t._base is not None else t  # e.g. weight.t() saved by a matrix product
        copy = by_id.get(id(base))
        if copy is None:
            # A detached alias: the same memory and version counter, but no reference to its grad_fn, which for a
            # saved *output* would make a cycle the graph never leaves (a leak per step).
            return t.detach()
        offset = t.storage_offset() - base.storage_offset() + copy.storage_offset()
        return copy.as_strided(t.size(), t.stride(), offset)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield snapshot


@contextlib.contextmanager
def swapped_in(module: nn.Module, snapshot: dict[str, Tensor]) -> Iterator[None]:
    """Give the live parameters and buffers the snapshot's values for the duration, then put theirs back."""
    live = dict(named_state(module))
    saved = {name: t.detach().clone() for name, t in live.items()}
    with torch.no_grad():
        for name, t in live.items():
            t.copy_(snapshot[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, t in live.items():
                t.copy_(saved[name])


def rebuild(module: nn.Module, snapshot: dict[str, Tensor], source: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Recompute a stashed forward pass: `module(source)` with the snapshot's weights, its graph ending at the
    live parameters exactly as the original did; running statistics are left untouched. Returns (output, the
    new snapshot, equal in value to `snapshot`)."""
    with swapped_in(module, snapshot), frozen_buffers(module), stashed_weights(module) as stash:
        return module(source), stash
