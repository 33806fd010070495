"""Recurrent cores: what a core is, the LSTM, its state as one flat tensor, and the Jacobian parts traces keep.

A *core* is any module with `initial_state(batch)` and `step(x_t, state)`, its state a tuple of (B, ...) tensors
((h, c) for `LSTMCore`). The boundary synthesizer reads and predicts the whole state at once, flattened and
concatenated (`flatten_state`); `unflatten_state` is its inverse.

Synthesizer traces ([Note: synthesizer traces] in `sequence_targets.py`) carry a gradient back through a cheap
part of each step's Jacobian ∂s_{t+1}/∂s_t: a core that supports them has `trace_jacobian(x_t, state,
next_state)` returning a `TraceJacobian` (`CellPath` for the LSTM) or a (B, D) tensor for a diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]
StepLoss = Callable[[Tensor, Tensor], Tensor]  # (prediction (B, ...), target (B, ...)) -> per-example loss (B,)


@runtime_checkable
class RecurrentCore(Protocol):
    """What the trainer needs from a recurrent core; any tuple-of-tensors state works. Synthesizer traces
    (`LambdaReturn`) also need `trace_jacobian(x_t, state, next_state)`: the part of the step's Jacobian
    ∂s_{t+1}/∂s_t they keep, in the flattened state's order, as a `TraceJacobian` or a (B, D) tensor for a
    diagonal (`LSTMCore.trace_jacobian`)."""

    def initial_state(self, batch: int) -> State:
        """The state at the start of a sequence: a tuple of (B, ...) tensors."""
        ...

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step: x_t (B, ...) and state -> (output_t (B, ...), next state)."""
        ...


@runtime_checkable
class TraceJacobian(Protocol):
    """A linear map kept of a step's (or a chunk's) Jacobian J = ∂s_end/∂s_start, per example, for synthesizer
    traces."""

    def then(self, later: TraceJacobian) -> TraceJacobian:
        """The product `later · self`: this map's steps, then `later`'s (same type)."""
        ...

    def carry(self, v: Tensor) -> Tensor:
        """Jᵀ v: a gradient (B, D) at the end state carried back to the start state, (B, D)."""
        ...


@dataclass(frozen=True)
class Diagonal:
    """A diagonal Jacobian, d (B, D)."""

    d: Tensor

    def then(self, later: Diagonal) -> Diagonal:
        return Diagonal(later.d * self.d)

    def carry(self, v: Tensor) -> Tensor:
        return self.d * v


@dataclass(frozen=True)
class CellPath:
    """An LSTM's Jacobian along the cell, per unit, state (h, c) flattened as [h, c] (B, 2H): rows (h_end, c_end),
    columns (h_start, c_start), the block [[0, readout], [0, forget]]; the h columns are dropped."""

    readout: Tensor  # (B, H) ∂h_end/∂c_start along the cell
    forget: Tensor  # (B, H) ∂c_end/∂c_start, the product of the forget gates

    def then(self, later: CellPath) -> CellPath:
        return CellPath(later.readout * self.forget, later.forget * self.forget)

    def carry(self, v: Tensor) -> Tensor:
        v_h, v_c = v.chunk(2, dim=1)
        return torch.cat([torch.zeros_like(v_h), self.readout * v_h + self.forget * v_c], dim=1)


def as_trace_jacobian(j: TraceJacobian | Tensor) -> TraceJacobian:
    """A core's `trace_jacobian` result as a `TraceJacobian` (a tensor is a diagonal)."""
    return Diagonal(j) if isinstance(j, Tensor) else j


class LSTMCore(nn.Module):
    """An `nn.LSTMCell`; state (h, c), each (B, hidden_size); output h.

    forget_bias: added to the forget gates' bias at initialisation. PyTorch draws every bias from U(±1/√H), so
    the forget gates start near ½ and the cell halves every step; a bias b starts them near σ(b) (1: σ = 0.73,
    the LSTM default of TensorFlow and Sonnet; Jozefowicz et al. 2015). The default 0 is PyTorch's init, which
    every committed row ran with (measurements: reports/recurrent/notes.md, "Forget bias").
    """

    def __init__(self, input_size: int, hidden_size: int, *, forget_bias: float = 0.0) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        if forget_bias:
            with torch.no_grad():
                self.cell.bias_ih[hidden_size : 2 * hidden_size] += forget_bias  # gate order i, f, g, o

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def initial_state(self, batch: int) -> State:
        w = self.cell.weight_hh
        zeros = torch.zeros(batch, self.hidden_size, dtype=w.dtype, device=w.device)
        return (zeros, zeros.clone())

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = self.cell(x_t, state)  # (B, H) each
        return h, (h, c)

    def trace_jacobian(self, x_t: Tensor, state: State, next_state: State) -> CellPath:
        """The columns of c_{t-1} of ∂(h_t, c_t)/∂(h_{t-1}, c_{t-1}), exact: f_t on c and o_t ⊙ tanh'(c_t) ⊙ f_t
        on h ([Note: synthesizer traces]); the h_{t-1} columns (through the recurrent weights) are dropped."""
        h, _ = state
        f, o = (torch.sigmoid(self._gate(x_t, h, k)) for k in (1, 3))  # gate order i, f, g, o
        return CellPath(readout=o * (1 - torch.tanh(next_state[1]) ** 2) * f, forget=f)

    def _gate(self, x_t: Tensor, h: Tensor, k: int) -> Tensor:
        """Pre-activation of gate k (0 i, 1 f, 2 g, 3 o) of `nn.LSTMCell`: (B, H)."""
        H, cell = self.hidden_size, self.cell  # noqa: N806 - the LSTM's H
        rows = slice(k * H, (k + 1) * H)
        pre = nn.functional.linear(x_t, cell.weight_ih[rows]) + nn.functional.linear(h, cell.weight_hh[rows])
        return pre + cell.bias_ih[rows] + cell.bias_hh[rows] if cell.bias else pre


def state_shapes(core: RecurrentCore) -> list[tuple[int, ...]]:
    """Per-example shape of every state tensor of `core`."""
    return [tuple(s.shape[1:]) for s in core.initial_state(1)]


def state_size(core: RecurrentCore) -> int:
    """D: the number of values in one example's flattened state."""
    return sum(math.prod(s) for s in state_shapes(core))


def flatten_state(state: State) -> Tensor:
    """(s_1 (B, ...), s_2 (B, ...), ...) -> (B, D): flattened and concatenated, D = Σ numel."""
    return torch.cat([s.flatten(1) for s in state], dim=1)


def unflatten_state(flat: Tensor, shapes: Sequence[tuple[int, ...]]) -> State:
    """Inverse of `flatten_state`: (B, D) -> views shaped (B, *shape) for each shape."""
    sizes = [math.prod(s) for s in shapes]
    parts = torch.split(flat, sizes, dim=1)
    return tuple(p.reshape(flat.shape[0], *s) for p, s in zip(parts, shapes, strict=True))
