"""Targets of M that need a whole sequence: the exact future gradient (`TrueGradient`) and λ-returns
(`LambdaReturn`).

[Note: synthesizer traces]
    The bootstrapped target is TD(0) for gradients: M at s_k regresses onto the next chunk's gradient plus its
    own next prediction carried back through the chunk. With a function approximator, TD(0)'s fixed point can
    lie far from the best fit of the true quantity when the discount is near 1 (the classic bound grows like
    1/(1 − γ)), and on Copy the plain bootstrap at λ = 1 did not train (reports/recurrent/notes.md, "Synthesizer
    traces"). TD(μ)'s λ-return interpolates between the bootstrap (μ = 0) and the full return (μ = 1). Over a
    sequence's boundaries 1 … K, with y_k the bootstrapped target and ĝ_k = M(s_k):

        G_K = y_K,    G_k = y_k + λ μ D_k (G_{k+1} − ĝ_{k+1})

    With D_k = (∂s_{k+1}/∂s_k)ᵀ, G_k at μ = 1 is exactly the discounted future gradient of the true-target
    ablation. But carrying a vector back through Jacobians is back-propagation through the sequence, BPTT's cost
    and lock. We keep a cheap part of each step's Jacobian, the core's `trace_jacobian` (a `TraceJacobian`, or a
    (B, D) tensor for a diagonal), and D_k is the product of those parts over the chunk's steps. For the LSTM
    that part is the cell path (`CellPath`): the columns of c_{t-1}, which are exact (c_t = f_t ⊙ c_{t-1} + …,
    h_t = o_t ⊙ tanh(c_t)), so per unit ∂c_t/∂c_{t-1} = f_t and ∂h_t/∂c_{t-1} = o_t ⊙ tanh'(c_t) ⊙ f_t; the
    columns of h_{t-1} are dropped (every path from h_{t-1} goes through the recurrent weights, dense). It is
    the exact Jacobian when the recurrent weights are 0, and close to the local approximations of e-prop and
    SnAp-1. M regresses onto G_k with the usual loss, summed over the boundaries, one optimizer step per sequence
    (`train_sequence` only). Since M does not step within a sequence, this forward view equals the sum of the
    online accumulating-trace updates (the backward view of TD(μ); accumulate BP(λ), Pemberton & Costa 2024,
    carries full Jacobian traces at O(D³) per step). An online form would serve endless streams (PTB) and is not
    implemented. What the core receives is unchanged: its loss + λ·ĝ at every chunk end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthgrad.core import synthesizer_loss, to_module_grad, to_synthesizer_units
from synthgrad.interface import Interface
from synthgrad.optim import step_and_clear
from synthgrad.recurrent.cells import RecurrentCore, StepLoss, flatten_state, state_shapes, unflatten_state
from synthgrad.recurrent.chunk import ChunkStats, unroll


def true_future_gradients(
    core: RecurrentCore,
    readout: nn.Module,
    loss_fn: StepLoss,
    inputs: Tensor,
    targets: Tensor,
    T: int,  # noqa: N803
    mask: Tensor | None = None,
    *,
    discount: float = 1.0,
) -> list[Tensor]:
    """The oracle: per-example gradients of the future loss at every boundary k = 1 … ⌈S/T⌉−1 inside a sequence
    (S, B, ...), computed exactly from the initial state, L per [Note: chunk loss]. Leaves `.grad` untouched.

        g_k = B·∂L_{k+1}/∂s_k + λ (∂s_{k+1}/∂s_k)ᵀ g_{k+1},   g at the sequence end = 0

    (L_{k+1}: the loss of the chunk after boundary k). At λ = `discount` = 1 this is B·∂L/∂s_k, the true gradient
    of all the loss after s_k (only that loss depends on s_k: full BPTT); at λ < 1 it is the fixed point of the
    discounted bootstrap ([Note: discount]), the target a perfect synthesizer would be trained on.

    Returns a list of (B, D) tensors, D = the flattened state size.
    """
    shapes, steps = state_shapes(core), inputs.shape[0]
    state, chunks = core.initial_state(inputs.shape[1]), []
    for lo in range(0, steps, T):  # one forward pass, each chunk's graph cut from the one before
        hi = min(lo + T, steps)
        with torch.set_grad_enabled(lo > 0):  # the first chunk has no boundary before it
            leaf = flatten_state(state).detach().requires_grad_(lo > 0)
            m = mask[lo:hi] if mask is not None else None
            loss, _, _, state = unroll(
                core, readout, loss_fn, inputs[lo:hi], targets[lo:hi], unflatten_state(leaf, shapes), m
            )
        chunks.append((leaf, loss, flatten_state(state)))
    grads: list[Tensor] = []
    with torch.enable_grad():  # backwards, one chunk at a time, carrying λ·g into the chunk before
        for leaf, loss, end in reversed(chunks[1:]):  # chunk k + 1 starts at boundary k
            if grads:
                loss = loss + (end * to_module_grad(discount * grads[-1])).sum()
            (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
            grads.append(to_synthesizer_units(g if g is not None else torch.zeros_like(leaf)))
    return grads[::-1]


def lambda_returns(
    boundary: Interface, stats: Sequence[ChunkStats], *, discount: float, decay: float
) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """M's predictions (with graph, under M's current parameters) at a sequence's boundaries and their λ-returns
    G_k ([Note: synthesizer traces]), from the stats of its chunks after the first, each holding its start
    state, bootstrapped target and trace Jacobian; (B, D) each."""
    starts = [s.start for s in stats]
    if any(s is None for s in starts):
        raise ValueError("λ-returns need every chunk's start state: train with a LambdaReturn boundary")
    predictions = boundary.predict(torch.cat(starts)).split([s.shape[0] for s in starts])
    scale = discount * decay
    returns: list[Tensor] = []
    for k in reversed(range(len(stats))):  # G_k = target_k + λμ D_k (G_{k+1} − ĝ_{k+1}); G_last = target
        g = stats[k].target
        if returns and stats[k].jacobian is not None:
            g = g + scale * stats[k].jacobian.carry(returns[-1] - predictions[k + 1].detach())
        returns.append(g)
    return predictions, returns[::-1]


def regress_sum(boundary: Interface, predictions: Sequence[Tensor], targets: Sequence[Tensor]) -> None:
    """One step of M on Σ_k synthesizer_loss(prediction_k, target_k): `Interface.regress` over several
    boundaries at once (a sum of per-boundary losses, each a batch mean, not one mean over all rows)."""
    loss = sum(synthesizer_loss(p, g) for p, g in zip(predictions, targets, strict=True))
    if isinstance(loss, Tensor) and loss.requires_grad:  # a parameter-free M has nothing to train
        loss.backward()  # reaches M only: it read detached states
        step_and_clear(boundary.optimizer)
        boundary.updates += 1
