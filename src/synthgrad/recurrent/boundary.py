"""The parts a recurrent method is made of: the chunk boundary's `Interface` and DNI + Aux's `AuxTask`.

Truncated BPTT has no boundary interface (0 at every chunk end); DNI has one whose synthesizer M reads the whole
core state (`BoundarySynthesizer`) and whose target rule says what M regresses onto (`synthgrad.interface`):

    Bootstrap(λ)            the paper's: the next chunk's gradient plus λ·ĝ carried back (PAPER.md §4)
    TrueGradient(disc=λ)    the exact λ-discounted future gradient ([Note: true-target ablation])
    LambdaReturn(λ, μ)      TD(μ) traces ([Note: synthesizer traces] in sequence_targets.py)

DNI + Aux adds an `AuxTask`. `method_parts` builds both from the spelling of the CLI and of the old
`TruncatedBPTT` keywords (method, synthesizer target, discount, trace decay, aux weight) and is the one place
their forbidden combinations are checked; `check_parts` checks parts built by hand against the core.

[Note: discount]
    With λ = 1 the fixed point of the bootstrap is the gradient of *all* future loss. On an endless stream (PTB:
    the state is carried across every chunk of an epoch) that is a sum of ever more terms, and an LSTM's cell
    carries gradient almost undamped, so the regression chases a target that grows with its own output (it
    diverged). A discount λ < 1 on the synthetic gradient where it enters the backward pass makes the target
    Σ_k λ^k (gradient of chunk k ahead carried back): a contraction, the TD(0) discount of value learning, which
    the bootstrapped target is. The same λ scales what the core receives, so M and the core see one quantity.
    PAPER.md does not give a discount; λ = 0.1 on PTB is our choice. Copy tasks run at λ = 1 with traces.
    Measurements: reports/recurrent/notes.md, "Discount".

[Note: DNI + Aux]
    The paper's DNI + Aux has the core "predict its own future synthetic gradients" (PAPER.md §4; exact form
    not given). Here: an auxiliary head A (zero-initialised linear by default) reads the core's output o_t at
    every step t of the chunk and predicts the synthetic gradient that M outputs at the end of the *current*
    chunk, ĝ_end (detached; per-example units; 0 at the end of a sequence, [Note: sequence end] in bptt.py):

        L_aux = weight · Σ_t synthesizer_loss(A(o_t), ĝ_end)

    L_aux is back-propagated into the core and A (it shapes the core's representation to anticipate its future
    gradient), never into M (ĝ_end is detached), and it is kept out of M's target: the gradient arriving at the
    start state comes from the task loss and ĝ_end only, so M keeps predicting the gradient of the future *task*
    loss. The price is one extra backward pass through the chunk (restricted to the parameters). Predicting
    "the gradient at the next boundary" rather than "T steps ahead" keeps a target that exists for every step
    without running beyond the chunk. `synthgrad train` weights it 0.1 on Copy tasks, 1 on PTB
    (reports/recurrent/notes.md, "Copy defaults").

[Note: true-target ablation]
    How much of the gap between DNI and full BPTT is the synthesizer's *form* (a linear map of the state), how
    much the *horizon* of its target (λ), and how much the *bootstrap* itself? `TrueGradient(discount=λ)` on the
    boundary regresses M onto what the bootstrap would converge to if M were perfect: the exact discounted future
    gradient g_k = B·∂L_{k+1}/∂s_k + λ(∂s_{k+1}/∂s_k)ᵀ g_{k+1} (`true_future_gradients`, from the whole
    episode), at λ = 1 the true gradient of all future loss. The core still trains chunk by chunk on its loss +
    λ·ĝ. It needs the whole episode in advance (`train_sequence` only) and a second pass over it: an analysis
    tool, not a decoupled method. The gradients are taken under the weights at the start of the episode.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthgrad.core import synthesizer_loss
from synthgrad.errors import ConfigError
from synthgrad.interface import Bootstrap, Interface, LambdaReturn, TargetRule, TrueGradient
from synthgrad.optim import OptimizerFactory
from synthgrad.recurrent.cells import RecurrentCore, State, state_shapes, state_size, unflatten_state
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec, zero_init_


class RecurrentMethod(enum.Enum):
    BPTT = "bptt"  # truncated BPTT: 0 at every chunk boundary
    DNI = "dni"  # a synthetic gradient at every chunk boundary
    DNI_AUX = "dni-aux"  # DNI + the auxiliary task of [Note: DNI + Aux]


class SynthesizerTarget(enum.Enum):
    """What M regresses onto, in the CLI's spelling ([Note: true-target ablation])."""

    BOOTSTRAP = "bootstrap"  # Bootstrap or, with a trace decay, LambdaReturn (PAPER.md §4)
    TRUE = "true"  # TrueGradient: the exact λ-discounted future gradient, from the whole episode (not decoupled)


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
        """M for `core`'s state, in the state's dtype and on its device."""
        return cls(state_shapes(core), **kwargs).to(core.initial_state(1)[0])  # type: ignore[arg-type]

    def forward(self, flat_state: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(flat_state, context)

    def split(self, flat: Tensor) -> State:
        """(B, D) -> one tensor per state tensor, e.g. (ĝ_h, ĝ_c) for an LSTM."""
        return unflatten_state(flat, self.shapes)


class AuxTask(nn.Module):
    """DNI + Aux ([Note: DNI + Aux]): `head` maps the core output o_t (B, ...) to a prediction of ĝ_end (B, D);
    its loss, times `weight`, trains the core and the head."""

    def __init__(self, head: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ConfigError(f"--aux-weight: the auxiliary loss's weight must be >= 0, got {weight}")
        self.head, self.weight = head, weight

    @classmethod
    def for_core(cls, core: RecurrentCore, weight: float = 1.0) -> AuxTask:
        """A zero-initialised Linear(core.output_size, D) head in the state's dtype and on its device."""
        if not hasattr(core, "output_size"):
            raise ConfigError(f"DNI + Aux needs a head for {type(core).__name__}, which has no output_size")
        head = zero_init_(nn.Linear(core.output_size, state_size(core)))
        return cls(head.to(core.initial_state(1)[0]), weight)

    def backward(self, outs: Sequence[Tensor], target: Tensor, core: nn.Module) -> float:
        """Back-propagate L_aux over the chunk's outputs `outs` into `core` and the head only; returns L_aux."""
        aux = sum(synthesizer_loss(self.head(o), target) for o in outs) * self.weight
        params = [p for p in (*core.parameters(), *self.head.parameters()) if p.requires_grad]
        torch.autograd.backward(aux, inputs=params, retain_graph=True)  # the start leaf is not an input
        return aux.item()


def _parse(kind: type[enum.Enum], value: object, what: str) -> enum.Enum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ConfigError(f"unknown {what} {value!r}; choose one of {choices}") from None


def _check_ranges(discount: float, decay: float) -> None:
    if not 0 < discount <= 1:
        raise ConfigError(f"--discount: the synthetic-gradient discount must be in (0, 1], got {discount}")
    if not 0 <= decay <= 1:
        raise ConfigError(f"--trace-decay: the trace decay must be in [0, 1], got {decay}")


def boundary_rule(
    method: RecurrentMethod | str,
    *,
    discount: float = 1.0,
    synthesizer_target: SynthesizerTarget | str = SynthesizerTarget.BOOTSTRAP,
    trace_decay: float = 0.0,
) -> TargetRule | None:
    """The boundary's target rule for `method` and the synthesizer options (None: truncated BPTT, no boundary);
    every forbidden combination is a `ConfigError` naming the option."""
    method = _parse(RecurrentMethod, method, "recurrent method")
    target = _parse(SynthesizerTarget, synthesizer_target, "synthesizer target")
    _check_ranges(discount, trace_decay)
    if method is RecurrentMethod.BPTT:
        for flag, given in (("--synthesizer-target true", target is SynthesizerTarget.TRUE),
                            ("--trace-decay", trace_decay > 0)):  # fmt: skip
            if given:
                raise ConfigError(f"{flag} applies to --method dni and dni-aux: truncated BPTT has no synthesizer")
        return None
    if target is SynthesizerTarget.TRUE:
        if trace_decay > 0:
            raise ConfigError("--trace-decay shapes the bootstrapped target: the exact target has none "
                              "(--synthesizer-target true)")  # fmt: skip
        return TrueGradient(discount=discount)
    return LambdaReturn(discount, trace_decay) if trace_decay > 0 else Bootstrap(discount)


def method_parts(
    core: RecurrentCore,
    optimizer: OptimizerFactory,
    *,
    method: RecurrentMethod | str = RecurrentMethod.DNI,
    synthesizer: nn.Module | None = None,
    synthesizer_optimizer: OptimizerFactory | None = None,
    aux_head: nn.Module | None = None,
    aux_weight: float = 1.0,
    discount: float = 1.0,
    synthesizer_target: SynthesizerTarget | str = SynthesizerTarget.BOOTSTRAP,
    trace_decay: float = 0.0,
) -> tuple[Interface | None, AuxTask | None]:
    """(boundary interface, aux task) of a method, in the old `TruncatedBPTT` keywords' spelling: M defaults to
    `BoundarySynthesizer.for_core(core)` trained by `synthesizer_optimizer` (default `optimizer`); DNI + Aux's
    head to `AuxTask.for_core`. `synthesizer` and the aux options are ignored where the method has none."""
    rule = boundary_rule(method, discount=discount, synthesizer_target=synthesizer_target, trace_decay=trace_decay)
    if rule is None:
        return None, None
    synthesizer = synthesizer if synthesizer is not None else BoundarySynthesizer.for_core(core)
    boundary = Interface(synthesizer, synthesizer_optimizer or optimizer, rule=rule)
    if RecurrentMethod(method) is not RecurrentMethod.DNI_AUX:
        return boundary, None
    return boundary, AuxTask(aux_head, aux_weight) if aux_head is not None else AuxTask.for_core(core, aux_weight)


def check_parts(core: RecurrentCore, boundary: Interface | None, aux: AuxTask | None) -> None:
    """What a core, a boundary and an aux task must agree on; a `ConfigError` naming the mismatch."""
    if aux is not None and boundary is None:
        raise ConfigError("an AuxTask predicts the boundary's synthetic gradient: it needs a boundary= interface")
    rule = boundary.rule if boundary is not None else None
    if rule is not None:
        _check_ranges(rule.discount, getattr(rule, "decay", 0.0))
    if isinstance(rule, TrueGradient | Bootstrap) and rule.every != 1:
        raise ConfigError(f"a recurrent boundary's target comes at every boundary: every=1, got {rule.every}")
    if isinstance(rule, LambdaReturn) and not callable(getattr(core, "trace_jacobian", None)):
        raise ConfigError(
            f"a trace decay needs a core with trace_jacobian(x_t, state, next_state); {type(core).__name__} has none"
        )
