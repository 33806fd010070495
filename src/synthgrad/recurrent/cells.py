"""Recurrent cores: what a core is, the LSTM, its state as one flat tensor, and the Jacobian parts traces keep.

A *core* is any module with `initial_state(batch)` and `step(x_t, state)`, its state a tuple of (B, ...) tensors
((h, c) for `LSTMCore` and `PeepholeLSTMCore`, which `make_core` builds from `--cell` and `--init`). The
boundary synthesizer reads and predicts the whole state at once, flattened and concatenated (`flatten_state`);
`unflatten_state` is its inverse.

Synthesizer traces ([Note: synthesizer traces] in `sequence_targets.py`) carry a gradient back through a cheap
part of each step's Jacobian ∂s_{t+1}/∂s_t: a core that supports them has `trace_jacobian(x_t, state,
next_state)` returning a `TraceJacobian` (`CellPath` for the LSTM) or a (B, D) tensor for a diagonal.
"""

from __future__ import annotations

import enum
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


class CellKind(enum.Enum):
    """The recurrent core of the Copy tasks and PTB (`--cell`, `make_core`)."""

    LSTM = "lstm"  # `nn.LSTMCell` (`LSTMCore`), every committed row
    PEEPHOLE = "peephole"  # the LSTM of Graves 2013 with peephole connections (`PeepholeLSTMCore`)


class LSTMInit(enum.Enum):
    """How an LSTM core's weights start (`--init`, `init_lstm_`). The forget bias is added afterwards."""

    TORCH = "torch"  # PyTorch's: every parameter U(±1/√H) (H = hidden units); every committed row
    UNIFORM = "uniform"  # every LSTM weight and bias (peepholes too) U(±0.1), the NTM-era scheme
    ORTHOGONAL = "orthogonal"  # each gate's H×H block of the recurrent weights orthogonal; the rest as torch


UNIFORM_INIT = 0.1  # LSTMInit.UNIFORM's bound


class LSTMCore(nn.Module):
    """An `nn.LSTMCell`; state (h, c), each (B, hidden_size); output h.

    forget_bias: added to the forget gates' bias at initialisation. PyTorch draws every bias from U(±1/√H), so
    the forget gates start near ½ and the cell halves every step; a bias b starts them near σ(b) (1: σ = 0.73,
    the LSTM default of TensorFlow and Sonnet; Jozefowicz et al. 2015). The default 0 is PyTorch's init, which
    every committed row ran with (measurements: reports/recurrent/notes.md, "Forget bias").
    init: the weights' initialisation (`LSTMInit`, `init_lstm_`), applied before the forget bias is added; the
    default is PyTorch's, drawn exactly as before the option existed.
    """

    def __init__(
        self, input_size: int, hidden_size: int, *, forget_bias: float = 0.0, init: LSTMInit | str = LSTMInit.TORCH
    ) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self._add_parameters()
        init_lstm_(self, LSTMInit(init))
        if forget_bias:
            with torch.no_grad():
                self.cell.bias_ih[hidden_size : 2 * hidden_size] += forget_bias  # gate order i, f, g, o

    def _add_parameters(self) -> None:
        """Parameters beyond `nn.LSTMCell`'s, created (and drawn) after its own (`PeepholeLSTMCore`)."""

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


class PeepholeLSTMCore(LSTMCore):
    """The LSTM of Graves (2013), "Generating sequences with recurrent neural networks", eq. 7–11: the input,
    forget and output gates also read the cell through diagonal peephole weights w_ci, w_cf, w_co (H each):

        i_t = σ(W_xi x_t + W_hi h_{t-1} + w_ci ⊙ c_{t-1} + b_i)
        f_t = σ(W_xf x_t + W_hf h_{t-1} + w_cf ⊙ c_{t-1} + b_f)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ tanh(W_xc x_t + W_hc h_{t-1} + b_c)
        o_t = σ(W_xo x_t + W_ho h_{t-1} + w_co ⊙ c_t + b_o)
        h_t = o_t ⊙ tanh(c_t)

    The weights without a peephole are an `nn.LSTMCell`'s (`self.cell`, drawn first, so at one seed they equal
    `LSTMCore`'s), with its two biases; `peephole` (3, H) holds the rows w_ci, w_cf, w_co, drawn like every
    `nn.LSTMCell` parameter, U(±1/√H), under `--init torch` (Graves 2013 gives no init). With the peepholes at
    zero this is `nn.LSTMCell`. State (h, c) and output h as `LSTMCore`.
    """

    def _add_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)
        self.peephole = nn.Parameter(torch.empty(3, self.hidden_size).uniform_(-bound, bound))  # w_ci, w_cf, w_co

    def _gates(self, x_t: Tensor, state: State) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(i, f, g, o, c_t) of one step, each (B, H)."""
        h, c = state
        cell = self.cell
        pre = nn.functional.linear(x_t, cell.weight_ih, cell.bias_ih) + nn.functional.linear(
            h, cell.weight_hh, cell.bias_hh
        )  # (B, 4H), gate order i, f, g, o
        pre_i, pre_f, pre_g, pre_o = pre.chunk(4, dim=1)
        w_ci, w_cf, w_co = self.peephole
        i, f, g = torch.sigmoid(pre_i + w_ci * c), torch.sigmoid(pre_f + w_cf * c), torch.tanh(pre_g)
        c_next = f * c + i * g
        return i, f, g, torch.sigmoid(pre_o + w_co * c_next), c_next

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        _, _, _, o, c = self._gates(x_t, state)
        h = o * torch.tanh(c)
        return h, (h, c)

    def trace_jacobian(self, x_t: Tensor, state: State, next_state: State) -> CellPath:
        """The columns of c_{t-1} of ∂(h_t, c_t)/∂(h_{t-1}, c_{t-1}), exact, as `LSTMCore.trace_jacobian`; the
        peepholes add the gates' own dependence on the cell, all diagonal:
            ∂c_t/∂c_{t-1} = f_t + c_{t-1} f_t(1 − f_t) w_cf + g_t i_t(1 − i_t) w_ci
            ∂h_t/∂c_{t-1} = (o_t tanh'(c_t) + tanh(c_t) o_t(1 − o_t) w_co) ∂c_t/∂c_{t-1}."""
        i, f, g, o, c_next = self._gates(x_t, state)
        w_ci, w_cf, w_co = self.peephole
        forget = f + state[1] * f * (1 - f) * w_cf + g * i * (1 - i) * w_ci
        tanh_c = torch.tanh(c_next)
        return CellPath(readout=(o * (1 - tanh_c**2) + tanh_c * o * (1 - o) * w_co) * forget, forget=forget)


def init_lstm_(core: LSTMCore, init: LSTMInit) -> None:
    """Initialise `core`'s LSTM weights in place per `init` (`LSTMInit`); TORCH leaves PyTorch's draws as they
    are (and draws nothing)."""
    cell, H = core.cell, core.hidden_size  # noqa: N806 - the LSTM's H
    with torch.no_grad():
        if init is LSTMInit.UNIFORM:
            for p in core.parameters():
                p.uniform_(-UNIFORM_INIT, UNIFORM_INIT)
        elif init is LSTMInit.ORTHOGONAL:
            for k in range(4):  # gate order i, f, g, o: one orthogonal H×H block each
                nn.init.orthogonal_(cell.weight_hh[k * H : (k + 1) * H])


def make_core(
    kind: CellKind | str,
    input_size: int,
    hidden_size: int,
    *,
    forget_bias: float = 0.0,
    init: LSTMInit | str = LSTMInit.TORCH,
) -> LSTMCore:
    """The core `--cell` names: `LSTMCore` or `PeepholeLSTMCore`, state (h, c) either way."""
    cls = PeepholeLSTMCore if CellKind(kind) is CellKind.PEEPHOLE else LSTMCore
    return cls(input_size, hidden_size, forget_bias=forget_bias, init=init)


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
