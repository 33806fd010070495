"""One chunk of a sequence: the core unrolled over it with its loss, and what training on it measured.

[Note: chunk loss]
    The per-step loss ℓ_{t,b} is per example (the `StepLoss` returns shape (B,)), optionally weighted by a
    mask m_{t,b} (Copy tasks score only the output phase). The loss of a chunk is the *sum over its steps of
    the batch mean*:  L_chunk = Σ_t (1/B) Σ_b m_{t,b} ℓ_{t,b}.  Summing over steps makes the loss of a sequence
    the sum of its chunks' losses, for any T, so a boundary gradient ∂L_future/∂s means the same thing at every
    chunk length; the batch mean (dividing by B, not by the number of scored entries) keeps the per-example
    units of the synthesizer exact ([Note: SG units] in synthgrad/core.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from synthgrad.recurrent.cells import RecurrentCore, State, StepLoss, TraceJacobian


@dataclass
class ChunkStats:
    """What one chunk of `TruncatedBPTT` measured; tensors are detached."""

    loss: float  # L_chunk, [Note: chunk loss]
    steps: int
    outputs: Tensor  # (steps, B, ...) readout outputs, e.g. to score the batch
    synthetic: Tensor | None = None  # ĝ_end (B, D) added at the end boundary, per-example units
    target: Tensor | None = None  # M's target for the start boundary (B, D)
    sg_loss: float | None = None  # synthesizer_loss(M(s_start), target)
    target_cosine: float | None = None  # cos(M(s_start), target)
    aux_loss: float | None = None  # L_aux, [Note: DNI + Aux] in boundary.py
    # kept under `LambdaReturn` for the λ-return update ([Note: synthesizer traces] in sequence_targets.py):
    start: Tensor | None = None  # the start boundary's state s_k (B, D)
    jacobian: TraceJacobian | None = None  # what the trace keeps of ∂s_end/∂s_start (None at a sequence end)


def unroll(
    core: RecurrentCore,
    readout: nn.Module,
    loss_fn: StepLoss,
    inputs: Tensor,
    targets: Tensor,
    state: State,
    mask: Tensor | None = None,
    step_states: list[State] | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor], State]:
    """Run the core over inputs (S, B, ...) from `state`; returns (L per [Note: chunk loss], core outputs o_t,
    readout outputs, final state), all with graph. `step_states`, if given, receives the state before each step."""
    loss = inputs.new_zeros(())
    outs, preds = [], []
    for t in range(inputs.shape[0]):
        if step_states is not None:
            step_states.append(state)
        out, state = core.step(inputs[t], state)
        pred = readout(out)
        ell = loss_fn(pred, targets[t])
        if ell.dim() != 1 or ell.shape[0] != inputs.shape[1]:
            raise ValueError(f"step loss must be per example, shape ({inputs.shape[1]},); got {tuple(ell.shape)}")
        loss = loss + (ell * mask[t] if mask is not None else ell).mean()
        outs.append(out)
        preds.append(pred)
    return loss, outs, preds, state
