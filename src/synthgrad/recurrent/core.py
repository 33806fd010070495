"""Truncated BPTT over chunks of T steps, with a synthetic gradient at every chunk boundary (PAPER.md §4).

A recurrent *core* is unrolled over a sequence cut into chunks of T steps. Truncated BPTT back-propagates
within a chunk and adds 0 at its end; DNI adds the prediction ĝ_end = M(s_end) of a *boundary synthesizer*
M that reads the core state s (all state tensors, flattened and concatenated: (h, c) for an LSTM). M is
trained on the bootstrapped target that the next chunk's backward pass delivers at its start state:

    target(s_k) = Σ_{τ in chunk k+1} ∂ℓ_τ/∂s_k + λ (∂s_{k+1}/∂s_k)ᵀ ĝ_{k+1}       (per-example units)

with λ = 1 (PAPER.md §4) unless a discount is set ([Note: discount]).

Every conversion between batch-mean gradients and synthesizer units, the regression loss and the backward pass
that yields the target come from `synthgrad.core` ([Note: SG units], [Note: SG loss scale]).

[Note: chunk loss]
    The per-step loss ℓ_{t,b} is per example (the `StepLoss` returns shape (B,)), optionally weighted by a
    mask m_{t,b} (Copy tasks score only the output phase). The loss of a chunk is the *sum over its steps of
    the batch mean*:  L_chunk = Σ_t (1/B) Σ_b m_{t,b} ℓ_{t,b}.  Summing over steps makes the loss of a sequence
    the sum of its chunks' losses, for any T, so a boundary gradient ∂L_future/∂s means the same thing at every
    chunk length; the batch mean (dividing by B, not by the number of scored entries) keeps the per-example
    units of the synthesizer exact.

[Note: a chunk without signal]
    A chunk whose loss is masked out entirely (the input phase of a Copy sequence), with no synthetic gradient
    at its end (truncated BPTT) and no auxiliary loss, has an objective that is identically 0, and the core is
    not updated: no backward pass, no optimizer step (a gradient accumulated by earlier `accumulate=True`
    chunks is left for the next step). Stepping Adam on a zero gradient is not a no-op: it moves every weight
    by its decayed momentum m̂/(√v̂ + ε), an echo of the last real update. Before this rule truncated BPTT on
    Copy took ⌊(L + 1)/T⌋ such echo steps per sequence of length L (at T = 2, L = 4: 2 of its 5 Adam steps).
    DNI and DNI + Aux always have a signal before the last chunk, so only truncated BPTT is affected.

[Note: synthesizer timing]
    The target for the prediction at boundary s_k only exists after chunk k+1's backward pass, which itself
    needs ĝ_{k+1} = M(s_{k+1}). So within one call of `train_chunk`, M is evaluated twice with the same
    parameters: at s_end (its value is injected into the backward pass) and at s_start (with graph, regressed
    onto the target that backward pass delivers), then M takes one optimizer step. The prediction that was
    injected at s_start one chunk earlier came from M's parameters before that step; the regression uses the
    current ones, so a stale graph is never kept across an optimizer step (the koz4k/dni-pytorch pattern).

[Note: sequence end]
    No synthetic gradient is added beyond the end of a sequence (`last=True`): the true future gradient there
    is exactly 0, so the target for the prediction at the last boundary is the true gradient of the last chunk
    alone. A fresh sequence (`state=None`) starts from `core.initial_state`; no prediction is made there.

[Note: discount]
    With λ = 1 the fixed point of the bootstrap is the gradient of *all* future loss. Where a sequence ends
    (Copy tasks) that sum is finite. On an endless stream (PTB: the state is carried across every chunk of an
    epoch, millions of characters) it is the sum of ever more terms, and an LSTM's cell state carries gradient
    almost undamped (forget gates near 1), so the regression chases a target that grows with its own output:
    measured (PTB, LSTM 256, T = 8, DNI + Aux, synthesizer Adam 1e-5) |ĝ|² went 0.005 → 226 → 5.4e6 within
    1,800 chunks, cos(ĝ, target) 0.99, training BPC 3.1 → 3.8 (plain DNI did the same at 1e-4, see [Note:
    synthesizer lr] in train.py). A discount λ < 1 on the synthetic gradient where it enters the backward pass
    makes the target Σ_k λ^k (gradient of chunk k ahead carried back): a contraction, the TD(0) discount of
    value learning, which the bootstrapped target is. The same λ scales what the core receives, so M and the
    core see one quantity. Reimplementations state that the paper scales the recurrent synthetic gradient by
    0.1; PAPER.md does not give it, so it is our choice: λ = 0.1 on PTB (`_PER_TASK` in train.py); Copy tasks
    run at λ = 1 with synthesizer traces ([Note: synthesizer traces], [Note: Copy defaults] in train.py).
    Copy tasks first ran at λ = 1 (their sequences end, so the sum is finite), and there the plain target
    made DNI *worse* than truncated BPTT: |ĝ| grew to 3–7× the true future gradient's norm (oracle of
    `true_future_gradients`) at a cosine of −0.07…0.1 with it, i.e. mostly noise fed to the core. Fixed-length
    Copy probes (LSTM 256, batch 32, Adam 1e-3, synthesizer Adam 1e-3, one seed), bits wrong per sequence:
        L = 3, T = 2, after 1,600 batches: BPTT 5.5 · DNI λ = 1 8.1 · DNI λ = 0.1 2.1 (cos 0.1–0.25)
        L = 5, T = 4, after 1,200 batches: BPTT 15.8 · DNI λ = 1 20.3 (chance: 20) · DNI λ = 0.1 12.6.

[Note: DNI + Aux]
    The paper's DNI + Aux has the core "predict its own future synthetic gradients" (PAPER.md §4; exact form
    not given). Here: an auxiliary linear head A (zero-initialised) reads the core's output o_t at every step t
    of the chunk and predicts the synthetic gradient that M outputs at the end of the *current* chunk,
    ĝ_end (detached; per-example units; 0 at the end of a sequence, see [Note: sequence end]):

        L_aux = aux_weight · Σ_t synthesizer_loss(A(o_t), ĝ_end)        (aux_weight = 1 by default here)

    L_aux is back-propagated into the core and A (that is its purpose: it shapes the core's representation to
    anticipate its future gradient), never into M (ĝ_end is detached). It is also kept out of M's target: the
    gradient arriving at the start state comes from the task loss and ĝ_end only, so M keeps predicting the
    paper's quantity (the gradient of the future *task* loss) and its target does not depend on its own
    output through A. The price is one extra backward pass through the chunk (restricted to the parameters)
    in this mode only. The target ĝ_end is the same for every step of a chunk, so the prediction is harder the
    earlier the step; predicting "the gradient at the next boundary" rather than "T steps ahead" keeps the
    target one that exists for every step without running beyond the chunk.
    The trainer (`synthgrad train`) weights it 0.1 on Copy tasks, where ĝ is the undiscounted future gradient
    (λ = 1 with traces) and a weight of 1 held DNI + Aux at truncated BPTT's level ([Note: Copy defaults] in
    train.py); PTB keeps 1.

[Note: true-target ablation]
    How much of the gap between DNI and full BPTT is the synthesizer's *form* (a linear map of the state), how
    much the *horizon* of its target (the discount λ), and how much the *bootstrap* itself (which carries the
    future back one chunk per update and feeds on its own output)? `synthesizer_target="true"` regresses M onto
    what the bootstrap would converge to if M were perfect: the exact discounted future gradient
    g_k = B·∂L_{k+1}/∂s_k + λ(∂s_{k+1}/∂s_k)ᵀ g_{k+1} (`true_future_gradients`, computed from the whole episode),
    at λ = 1 the true gradient of all future loss, as full BPTT gives it. Everything else is unchanged: the core
    still trains chunk by chunk on its loss + λ·ĝ. So at a given λ, true vs bootstrap measures the bootstrap's
    learning dynamics, and true at λ = 1 bounds what a synthesizer of this form can give the core.
    It needs the whole episode in advance (`train_sequence` only) and a second pass over it, so it is an
    analysis tool, not a decoupled method. The gradients are taken under the weights at the start of the
    episode; the chunks' own updates within the episode move the states they are compared with by O(lr).

[Note: synthesizer traces]
    The bootstrapped target is TD(0) for gradients: M at s_k regresses onto the next chunk's gradient plus its
    own next prediction carried back through the chunk. With a function approximator, TD(0)'s fixed point can
    lie far from the best fit of the true quantity when the discount is near 1 (the classic bound grows like
    1/(1 − γ)), and that is what Copy shows: at λ = 1 the cosine between the linear M and the exact future
    gradient fell to 0.0–0.1, while the same M regressed onto the exact gradient reached 0.2–0.35 and twice
    truncated BPTT's length ([Note: true-target ablation], the recurrent report). TD(μ)'s λ-return
    interpolates between the bootstrap (μ = 0) and the full return (μ = 1). Over a sequence's boundaries
    1 … K, with y_k the bootstrapped target and ĝ_k = M(s_k):

        G_K = y_K,    G_k = y_k + λ μ D_k (G_{k+1} − ĝ_{k+1})

    With D_k = (∂s_{k+1}/∂s_k)ᵀ, G_k at μ = 1 is exactly the discounted future gradient of the ablation. But
    carrying a vector back through Jacobians is back-propagation through the sequence, BPTT's cost and lock.
    We keep a cheap part of each step's Jacobian, the core's `trace_jacobian` (a `TraceJacobian`, or a (B, D)
    tensor for a diagonal), and D_k is the product of those parts over the chunk's steps. For the LSTM that part
    is the cell path (`CellPath`): the columns of c_{t-1}, which are exact (c_t = f_t ⊙ c_{t-1} + …,
    h_t = o_t ⊙ tanh(c_t)), so per unit ∂c_t/∂c_{t-1} = f_t and ∂h_t/∂c_{t-1} = o_t ⊙ tanh'(c_t) ⊙ f_t, and
    the columns of h_{t-1} are dropped (every path from h_{t-1} goes through the recurrent weights, dense). It is
    the exact Jacobian when the recurrent weights are 0, and close to the local approximations of e-prop and
    SnAp-1. The first version kept only the forget gates (c → c, no readout h ← c); in 10-minute Copy rows the
    readout term added one length at T = 2 and on a second seed at T = 4, none at T = 3, 5 and seed 0's T = 4,
    and never lost one ([Note: Copy defaults] in train.py). M regresses onto G_k
    with the usual loss, summed over the boundaries, one optimizer step per sequence (`trace_decay` = μ;
    `train_sequence` only). Since M does not step within a sequence, this forward view equals the sum of the
    online accumulating-trace updates (the backward view of TD(μ); accumulate BP(λ), Pemberton & Costa 2024,
    carries full Jacobian traces at O(D³) per step). The forward view costs one pass over K boundaries per
    sequence; an online form would serve endless streams (PTB), and is not implemented. What the core receives
    is unchanged: its loss + λ·ĝ at every chunk end. μ = 0 is the plain bootstrap, M stepped once per sequence.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from synthgrad.core import backward_through, batch_cosine, synthesizer_loss, to_module_grad, to_synthesizer_units
from synthgrad.errors import ConfigError
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec, zero_init_

State = tuple[Tensor, ...]
StepLoss = Callable[[Tensor, Tensor], Tensor]  # (prediction (B, ...), target (B, ...)) -> per-example loss (B,)
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@runtime_checkable
class RecurrentCore(Protocol):
    """What the trainer needs from a recurrent core; any tuple-of-tensors state works. Synthesizer traces
    (`trace_decay` > 0) also need `trace_jacobian(x_t, state, next_state)`: the part of the step's Jacobian
    ∂s_{t+1}/∂s_t they keep, in the flattened state's order, as a `TraceJacobian` or a (B, D) tensor for a
    diagonal (`LSTMCore.trace_jacobian`, [Note: synthesizer traces])."""

    def initial_state(self, batch: int) -> State:
        """The state at the start of a sequence: a tuple of (B, ...) tensors."""
        ...

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step: x_t (B, ...) and state -> (output_t (B, ...), next state)."""
        ...


@runtime_checkable
class TraceJacobian(Protocol):
    """A linear map kept of a step's (or a chunk's) Jacobian J = ∂s_end/∂s_start, per example, for synthesizer
    traces ([Note: synthesizer traces])."""

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
    the LSTM default of TensorFlow and Sonnet; Jozefowicz et al. 2015). See [Note: forget bias] in train.py.
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


class RecurrentMethod(enum.Enum):
    BPTT = "bptt"  # truncated BPTT: 0 at every chunk boundary
    DNI = "dni"  # a synthetic gradient at every chunk boundary
    DNI_AUX = "dni-aux"  # DNI + the auxiliary task of [Note: DNI + Aux]


class SynthesizerTarget(enum.Enum):
    """What M regresses onto ([Note: true-target ablation])."""

    BOOTSTRAP = "bootstrap"  # the paper's: the next chunk's gradient plus λ·ĝ carried back (PAPER.md §4)
    TRUE = "true"  # diagnostic: the exact λ-discounted future gradient, from the whole episode (not decoupled)


def state_shapes(core: RecurrentCore) -> list[tuple[int, ...]]:
    """Per-example shape of every state tensor of `core`."""
    return [tuple(s.shape[1:]) for s in core.initial_state(1)]


def flatten_state(state: State) -> Tensor:
    """(s_1 (B, ...), s_2 (B, ...), ...) -> (B, D): flattened and concatenated, D = Σ numel."""
    return torch.cat([s.flatten(1) for s in state], dim=1)


def unflatten_state(flat: Tensor, shapes: Sequence[tuple[int, ...]]) -> State:
    """Inverse of `flatten_state`: (B, D) -> views shaped (B, *shape) for each shape."""
    sizes = [math.prod(s) for s in shapes]
    parts = torch.split(flat, sizes, dim=1)
    return tuple(p.reshape(flat.shape[0], *s) for p, s in zip(parts, shapes, strict=True))


class BoundarySynthesizer(nn.Module):
    """M(s, c): predicts the per-example gradient of the future loss w.r.t. the whole core state.

    Reads the flattened state (B, D) (see `flatten_state`) and an optional context (B, context_dim); returns
    (B, D). Linear and zero-initialised by default (PAPER.md §4), built by `SynthesizerSpec`; `net` replaces
    it with any module mapping (source (B, D), context) -> (B, D) (an oracle in tests).
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, ...]],
        *,
        spec: SynthesizerSpec | None = None,
        context_dim: int = 0,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        self.state_size = sum(math.prod(s) for s in self.shapes)
        spec = spec or SynthesizerSpec(kind=SynthesizerKind.LINEAR)
        self.net = net if net is not None else spec.build((self.state_size,), context_dim=context_dim)

    @classmethod
    def for_core(cls, core: RecurrentCore, **kwargs: object) -> BoundarySynthesizer:
        return cls(state_shapes(core), **kwargs)  # type: ignore[arg-type]

    def forward(self, flat_state: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(flat_state, context)

    def split(self, flat: Tensor) -> State:
        """(B, D) -> one tensor per state tensor, e.g. (ĝ_h, ĝ_c) for an LSTM."""
        return unflatten_state(flat, self.shapes)


@dataclass
class ChunkStats:
    """What one `train_chunk` measured; tensors are detached."""

    loss: float  # L_chunk, [Note: chunk loss]
    steps: int
    outputs: Tensor  # (steps, B, ...) readout outputs, e.g. to score the batch
    synthetic: Tensor | None = None  # ĝ_end (B, D) added at the end boundary, per-example units
    target: Tensor | None = None  # bootstrapped target for the start boundary (B, D)
    sg_loss: float | None = None  # synthesizer_loss(M(s_start), target)
    target_cosine: float | None = None  # cos(M(s_start), target)
    aux_loss: float | None = None  # L_aux, [Note: DNI + Aux]
    # kept by `train_chunk(..., defer_synthesizer=True)` for the λ-return update ([Note: synthesizer traces]):
    start: Tensor | None = None  # the start boundary's state s_k (B, D)
    jacobian: TraceJacobian | None = None  # what the trace keeps of ∂s_end/∂s_start (None at a sequence end)


def _optimizer(params: Iterable[nn.Parameter], factory: OptimizerFactory) -> torch.optim.Optimizer | None:
    params = [p for p in params if p.requires_grad]
    return factory(params) if params else None


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


class TruncatedBPTT(nn.Module):
    """Train a recurrent core chunk by chunk: truncated BPTT, DNI, or DNI + Aux (PAPER.md §4).

    Args:
        core: a `RecurrentCore` module (e.g. `LSTMCore`).
        readout: maps the core output o_t (B, ...) to the prediction scored by `loss_fn`.
        loss_fn: per-step, per-example loss (prediction, target_t) -> (B,), see [Note: chunk loss].
        optimizer: factory for the optimizer of core + readout (+ aux head).
        T: chunk length, ≥ 1.
        method: `RecurrentMethod` or its value ("bptt", "dni", "dni-aux").
        synthesizer: the boundary synthesizer; default `BoundarySynthesizer.for_core(core)` (linear, zero).
            Ignored for BPTT.
        synthesizer_optimizer: factory for M's optimizer; default `optimizer`.
        aux_head: DNI + Aux head o_t -> (B, D); default a zero-initialised Linear(core.output_size, D).
        aux_weight: weight of L_aux ([Note: DNI + Aux]).
        discount: λ in (0, 1], the factor of the synthetic gradient where it enters the backward pass (and so
            the bootstrapped target), see [Note: discount]; 1 is the plain formula.
        synthesizer_target: what M regresses onto in `train_sequence`: "bootstrap" (the paper's) or "true"
            (the diagnostic of [Note: true-target ablation]).
        trace_decay: μ in [0, 1]; above 0, `train_sequence` trains M once per sequence on the λ-return of
            [Note: synthesizer traces] (needs a core with `trace_jacobian`); 0 is the paper's per-chunk bootstrap.
    """

    def __init__(
        self,
        core: nn.Module,
        readout: nn.Module,
        loss_fn: StepLoss,
        optimizer: OptimizerFactory,
        *,
        T: int,  # noqa: N803 - the paper's name
        method: RecurrentMethod | str = RecurrentMethod.DNI,
        synthesizer: BoundarySynthesizer | None = None,
        synthesizer_optimizer: OptimizerFactory | None = None,
        aux_head: nn.Module | None = None,
        aux_weight: float = 1.0,
        discount: float = 1.0,
        synthesizer_target: SynthesizerTarget | str = SynthesizerTarget.BOOTSTRAP,
        trace_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(core, RecurrentCore):
            raise TypeError(f"{type(core).__name__} has no initial_state(batch) / step(x_t, state)")
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"chunk length T must be an integer >= 1, got {T!r}")
        try:
            self.method = RecurrentMethod(method)
        except ValueError:
            choices = ", ".join(m.value for m in RecurrentMethod)
            raise ConfigError(f"unknown recurrent method {method!r}; choose one of {choices}") from None
        if aux_weight < 0:
            raise ConfigError(f"aux_weight must be >= 0, got {aux_weight}")
        if not 0 < discount <= 1:
            raise ConfigError(f"the synthetic-gradient discount must be in (0, 1], got {discount}")
        try:
            self.synthesizer_target = SynthesizerTarget(synthesizer_target)
        except ValueError:
            choices = ", ".join(m.value for m in SynthesizerTarget)
            raise ConfigError(f"unknown synthesizer target {synthesizer_target!r}; choose one of {choices}") from None
        if self.synthesizer_target is SynthesizerTarget.TRUE and self.method is RecurrentMethod.BPTT:
            raise ConfigError("a synthesizer target applies to dni and dni-aux; truncated BPTT has no synthesizer")
        if not 0 <= trace_decay <= 1:
            raise ConfigError(f"the trace decay must be in [0, 1], got {trace_decay}")
        if trace_decay > 0:
            if self.method is RecurrentMethod.BPTT:
                raise ConfigError("a trace decay applies to dni and dni-aux; truncated BPTT has no synthesizer")
            if self.synthesizer_target is SynthesizerTarget.TRUE:
                raise ConfigError("a trace decay shapes the bootstrapped target; the exact target has none")
            if not callable(getattr(core, "trace_jacobian", None)):
                raise ConfigError(
                    "a trace decay needs a core with trace_jacobian(x_t, state, next_state); "
                    f"{type(core).__name__} has none"
                )
        self.trace_decay = trace_decay
        self.core, self.readout, self.loss_fn, self.T = core, readout, loss_fn, T
        self.shapes = state_shapes(core)
        self.synthesizer: BoundarySynthesizer | None = None
        self.aux_head: nn.Module | None = None
        self.aux_weight = aux_weight
        self.discount = discount
        like = self.core.initial_state(1)[0]  # defaults are built with the state's dtype and device
        if self.method is not RecurrentMethod.BPTT:
            if synthesizer is None:
                synthesizer = BoundarySynthesizer(self.shapes).to(like)
            self.synthesizer = synthesizer
        if self.method is RecurrentMethod.DNI_AUX:
            if aux_head is None:
                if not hasattr(core, "output_size"):
                    raise ConfigError("DNI + Aux needs aux_head= for a core without an output_size attribute")
                aux_head = zero_init_(nn.Linear(core.output_size, self.synthesizer.state_size)).to(like)
            self.aux_head = aux_head
        model_params = [*core.parameters(), *readout.parameters()]
        if self.aux_head is not None:
            model_params += list(self.aux_head.parameters())
        self.optimizer = _optimizer(model_params, optimizer)
        self.synthesizer_optimizer = (
            _optimizer(self.synthesizer.parameters(), synthesizer_optimizer or optimizer)
            if self.synthesizer is not None
            else None
        )

    def train_chunk(
        self,
        inputs: Tensor,
        targets: Tensor,
        state: State | None = None,
        *,
        mask: Tensor | None = None,
        last: bool = False,
        accumulate: bool = False,
        start_context: Tensor | None = None,
        end_context: Tensor | None = None,
        given_target: Tensor | None = None,
        defer_synthesizer: bool = False,
    ) -> tuple[State, ChunkStats]:
        """One chunk: forward ≤ T steps, one backward pass, one update of the core and of M.

        Args:
            inputs: (T', B, ...) with 1 ≤ T' ≤ T (the last chunk of a sequence may be shorter).
            targets: (T', B, ...) whatever `loss_fn` takes per step.
            state: the detached state at the start boundary, or None to start a sequence.
            mask: (T', B) weights of the per-step losses, or None.
            last: the chunk ends the sequence: no synthetic gradient at its end ([Note: sequence end]).
            accumulate: leave the core's gradient in `.grad` without stepping (call `step()` later); M still
                trains every chunk.
            start_context, end_context: (B, C) contexts of M at the two boundaries, if M is conditioned.
            given_target: (B, D) what M's prediction at the start boundary regresses onto instead of the
                bootstrapped target ([Note: true-target ablation]); None: the bootstrap.
            defer_synthesizer: do not train M here; the stats keep the start state, the target and the chunk's
                trace Jacobian for `train_sequence`'s λ-return update ([Note: synthesizer traces]).

        Returns:
            (the end state, detached; `ChunkStats`).
        """
        steps = inputs.shape[0]
        if not 1 <= steps <= self.T:
            raise ValueError(f"a chunk has 1..T={self.T} steps, got {steps}")
        if mask is not None and mask.shape != inputs.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} != (steps, batch) {tuple(inputs.shape[:2])}")
        synth = self.synthesizer
        wants_target = synth is not None and state is not None
        bootstrap = wants_target and given_target is None  # the target comes from this backward pass
        if state is None:
            state = self.core.initial_state(inputs.shape[1])
        start = flatten_state(state).detach().requires_grad_(bootstrap)  # (B, D), the start leaf
        step_states: list[State] | None = [] if defer_synthesizer and wants_target and not last else None
        loss, outs, preds, end_state = unroll(
            self.core, self.readout, self.loss_fn, inputs, targets, unflatten_state(start, self.shapes), mask,
            step_states,
        )  # fmt: skip
        end = flatten_state(end_state)  # (B, D), with graph
        jacobian = None  # under the weights of this forward pass, before the core's step below
        if step_states is not None:
            with torch.no_grad():
                nexts = [*step_states[1:], end_state]
                steps_j = [
                    as_trace_jacobian(self.core.trace_jacobian(x, s, n))
                    for x, s, n in zip(inputs, step_states, nexts, strict=True)
                ]
                jacobian = functools.reduce(lambda acc, j: acc.then(j), steps_j)
        objective = loss
        synthetic = None
        if synth is not None and not last:
            with torch.no_grad():
                synthetic = synth(end.detach(), end_context)  # ĝ_end (B, D), per-example units
            # ∂/∂θ of ⟨s_end, λĝ/B⟩ is (∂s_end/∂θ)ᵀ λĝ/B: the synthetic gradient enters the backward pass here,
            # scaled by the discount λ ([Note: discount]).
            objective = objective + (end * to_module_grad(self.discount * synthetic)).sum()
        stats = ChunkStats(loss=loss.item(), steps=steps, outputs=torch.stack(preds).detach(), synthetic=synthetic)
        if self.aux_head is not None:
            aux_target = synthetic if synthetic is not None else torch.zeros_like(end.detach())
            stats.aux_loss = self._aux_backward(outs, aux_target)
        with torch.set_grad_enabled(not defer_synthesizer):
            prediction = synth(start.detach(), start_context) if wants_target else None  # graph to M only
        # [Note: a chunk without signal]: nothing scored, no synthetic gradient, no aux loss -> no update.
        signal = mask is None or bool(mask.any()) or synthetic is not None or self.aux_head is not None
        target = backward_through(objective, None, start) if bootstrap else given_target
        if signal and not bootstrap:
            backward_through(objective, None, None)
        if signal and not accumulate:
            self.step()
        if prediction is not None and target is not None:
            if defer_synthesizer:
                stats.start, stats.jacobian = start.detach(), jacobian
                self._measure_synthesizer(prediction, target, stats)
            else:
                self._train_synthesizer(prediction, target, stats)
        return tuple(s.detach() for s in end_state), stats

    def _aux_backward(self, outs: list[Tensor], aux_target: Tensor) -> float:
        """Back-propagate L_aux into the core and the aux head only ([Note: DNI + Aux]); returns L_aux."""
        assert self.aux_head is not None
        aux = sum(synthesizer_loss(self.aux_head(o), aux_target) for o in outs) * self.aux_weight
        params = [p for p in (*self.core.parameters(), *self.aux_head.parameters()) if p.requires_grad]
        torch.autograd.backward(aux, inputs=params, retain_graph=True)  # the start leaf is not an input
        return aux.item()

    def _train_synthesizer(self, prediction: Tensor, target: Tensor, stats: ChunkStats) -> None:
        sg_loss = synthesizer_loss(prediction, target)
        self._step_synthesizer(sg_loss)
        self._measure_synthesizer(prediction, target, stats, sg_loss)

    def _step_synthesizer(self, sg_loss: Tensor) -> None:
        if sg_loss.requires_grad:  # a parameter-free oracle has nothing to train
            sg_loss.backward()  # reaches M only: it read a detached state
            if self.synthesizer_optimizer is not None:
                self.synthesizer_optimizer.step()
                self.synthesizer_optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _measure_synthesizer(
        prediction: Tensor, target: Tensor, stats: ChunkStats, sg_loss: Tensor | None = None
    ) -> None:
        prediction, stats.target = prediction.detach(), target.detach()
        stats.sg_loss = (sg_loss if sg_loss is not None else synthesizer_loss(prediction, stats.target)).item()
        stats.target_cosine = batch_cosine(prediction, stats.target).item()

    def lambda_returns(self, stats: Sequence[ChunkStats]) -> tuple[tuple[Tensor, ...], list[Tensor]]:
        """M's predictions (with graph) at a sequence's boundaries and their λ-returns ([Note: synthesizer traces]),
        from the stats of its chunks after the first (each kept by `defer_synthesizer=True`); (B, D) each."""
        assert self.synthesizer is not None
        starts = [s.start for s in stats]
        if any(s is None for s in starts):
            raise ValueError("λ-returns need every chunk's start state: train them with defer_synthesizer=True")
        predictions = self.synthesizer(torch.cat(starts)).split([s.shape[0] for s in starts])  # under current M
        scale = self.discount * self.trace_decay
        returns: list[Tensor] = []
        for k in reversed(range(len(stats))):  # G_k = target_k + λμ D_k (G_{k+1} − ĝ_{k+1}); G_last = target
            g = stats[k].target
            if returns and stats[k].jacobian is not None:
                g = g + scale * stats[k].jacobian.carry(returns[-1] - predictions[k + 1].detach())
            returns.append(g)
        return predictions, returns[::-1]

    def step(self) -> None:
        """Apply the core's accumulated gradient (after `accumulate=True` chunks) and clear it."""
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def train_sequence(
        self, inputs: Tensor, targets: Tensor, mask: Tensor | None = None, *, accumulate: bool = False
    ) -> list[ChunkStats]:
        """A whole sequence (S, B, ...) from the initial state, in chunks of T; `accumulate` steps once at the
        end (one update from the whole sequence's chunked gradient)."""
        traced = self.synthesizer is not None and self.trace_decay > 0
        true = None  # the true future gradient at every boundary, [Note: true-target ablation]
        if self.synthesizer is not None and self.synthesizer_target is SynthesizerTarget.TRUE:
            true = true_future_gradients(
                self.core, self.readout, self.loss_fn, inputs, targets, self.T, mask, discount=self.discount
            )
        stats, state = [], None
        for k, lo in enumerate(range(0, inputs.shape[0], self.T)):
            hi = min(lo + self.T, inputs.shape[0])
            m = mask[lo:hi] if mask is not None else None
            given = true[k - 1] if true is not None and k > 0 else None  # boundary k - 1 starts chunk k
            state, s = self.train_chunk(
                inputs[lo:hi], targets[lo:hi], state, mask=m, last=hi == inputs.shape[0], accumulate=accumulate,
                given_target=given, defer_synthesizer=traced,
            )  # fmt: skip
            stats.append(s)
        if accumulate:
            self.step()
        if traced and len(stats) > 1:  # one step of M on the whole sequence's λ-returns
            predictions, returns = self.lambda_returns(stats[1:])
            self._step_synthesizer(sum(synthesizer_loss(p, g) for p, g in zip(predictions, returns, strict=True)))
        return stats

    @torch.no_grad()
    def predict(self, inputs: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Readout outputs (S, B, ...) over inputs (S, B, ...) from `state` (default: initial), and the end state."""
        state = self.core.initial_state(inputs.shape[1]) if state is None else state
        preds = []
        for t in range(inputs.shape[0]):
            out, state = self.core.step(inputs[t], state)
            preds.append(self.readout(out))
        return torch.stack(preds), state

    def training_state(self) -> dict:
        """Weights and optimizer states, to resume."""
        opts = (self.optimizer, self.synthesizer_optimizer)
        return {"model": self.state_dict(), "optimizers": [o.state_dict() if o else None for o in opts]}

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for opt, s in zip((self.optimizer, self.synthesizer_optimizer), state["optimizers"], strict=True):
            if opt is not None:
                opt.load_state_dict(s)


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
