"""Truncated BPTT over chunks of T steps, with a synthetic gradient at every chunk boundary (PAPER.md §4).

A recurrent core is unrolled over a sequence cut into chunks of T steps. Truncated BPTT back-propagates within a
chunk and adds 0 at its end; with a boundary `Interface` (DNI) it adds λ·ĝ_end, ĝ_end = M(s_end) the prediction
of a synthesizer M that reads the core state s (all state tensors, flattened and concatenated: (h, c) for an
LSTM). Under the paper's rule, `Bootstrap(λ)`, M is trained on the target that the next chunk's backward pass
delivers at its start state:

    target(s_k) = Σ_{τ in chunk k+1} ∂ℓ_τ/∂s_k + λ (∂s_{k+1}/∂s_k)ᵀ ĝ_{k+1}       (per-example units)

with λ = 1 in the paper ([Note: discount] in boundary.py). `TrueGradient` and `LambdaReturn` need the whole
sequence (`train_sequence`); DNI + Aux adds an `AuxTask`. Every conversion between batch-mean gradients and
synthesizer units, the regression loss and the backward pass that yields the target come from `synthgrad.core`.

[Note: a chunk without signal]
    A chunk whose loss is masked out entirely (the input phase of a Copy sequence), with no synthetic gradient
    at its end (truncated BPTT) and no auxiliary loss, has an objective that is identically 0, and the core is
    not updated: no backward pass, no optimizer step (a gradient accumulated by earlier `accumulate=True`
    chunks is left for the next step). Stepping Adam on a zero gradient is not a no-op: it moves every weight
    by its decayed momentum m̂/(√v̂ + ε), an echo of the last real update (truncated BPTT on Copy would take
    ⌊(L + 1)/T⌋ such steps per sequence of length L). DNI and DNI + Aux always have a signal before the last
    chunk, so only truncated BPTT is affected.

[Note: synthesizer timing]
    The target for the prediction at boundary s_k only exists after chunk k+1's backward pass, which itself
    needs ĝ_{k+1} = M(s_{k+1}). So within one chunk, M is evaluated twice with the same parameters: at s_end
    (its value is injected into the backward pass) and at s_start (with graph, regressed onto the target that
    backward pass delivers), then M takes one optimizer step. The prediction that was injected at s_start one
    chunk earlier came from M's parameters before that step; the regression uses the current ones, so a stale
    graph is never kept across an optimizer step (the koz4k/dni-pytorch pattern).

[Note: sequence end]
    No synthetic gradient is added beyond the end of a sequence (`last=True`): the true future gradient there
    is exactly 0, so the target for the prediction at the last boundary is the true gradient of the last chunk
    alone. A fresh sequence (`state=None`) starts from `core.initial_state`; no prediction is made there.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import Tensor, nn

from synthgrad.core import backward_through, batch_cosine, synthesizer_loss, to_module_grad
from synthgrad.errors import ConfigError
from synthgrad.interface import Interface, LambdaReturn, TrueGradient
from synthgrad.optim import OptimizerFactory, optimizer_or_none
from synthgrad.recurrent.boundary import AuxTask, RecurrentMethod, check_parts, method_parts
from synthgrad.recurrent.cells import (
    RecurrentCore,
    State,
    StepLoss,
    TraceJacobian,
    as_trace_jacobian,
    flatten_state,
    state_shapes,
    unflatten_state,
)
from synthgrad.recurrent.chunk import ChunkStats, unroll
from synthgrad.recurrent.sequence_targets import lambda_returns, regress_sum, true_future_gradients

# The keywords of TruncatedBPTT before its parts were objects; still accepted, mapped by `method_parts`.
LEGACY_KEYWORDS = frozenset({"method", "synthesizer", "synthesizer_optimizer", "aux_head", "aux_weight", "discount",
                             "synthesizer_target", "trace_decay"})  # fmt: skip


class TruncatedBPTT(nn.Module):
    """Train a recurrent core chunk by chunk: truncated BPTT, DNI, or DNI + Aux (PAPER.md §4).

    Args:
        core: a `RecurrentCore` module (e.g. `LSTMCore`).
        readout: maps the core output o_t (B, ...) to the prediction scored by `loss_fn`.
        loss_fn: per-step, per-example loss (prediction, target_t) -> (B,), see [Note: chunk loss].
        optimizer: factory for the optimizer of core + readout (+ the aux head).
        T: chunk length, ≥ 1.
        boundary: the chunk boundary's interface: M (e.g. `BoundarySynthesizer.for_core(core)`), its optimizer
            and its rule (`Bootstrap`, `TrueGradient`, `LambdaReturn`); None: truncated BPTT.
        aux: DNI + Aux's auxiliary task (needs a boundary).
        clip: before every step of the model's optimizer, scale the gradient of everything it updates (core,
            readout, DNI + Aux's head) to a global L2 norm of at most `clip` (`clip_grad_norm_`); 0: no clipping.
            M's optimizer is not clipped.

    The keywords of earlier versions (`method=`, `synthesizer=`, `synthesizer_optimizer=`, `aux_head=`,
    `aux_weight=`, `discount=`, `synthesizer_target=`, `trace_decay=`) still work, with a DeprecationWarning;
    with any of them the method defaults to "dni", as it did.
    """

    def __init__(
        self,
        core: nn.Module,
        readout: nn.Module,
        loss_fn: StepLoss,
        optimizer: OptimizerFactory,
        *,
        T: int,  # noqa: N803 - the paper's name
        boundary: Interface | None = None,
        aux: AuxTask | None = None,
        clip: float = 0.0,
        **legacy: object,
    ) -> None:
        super().__init__()
        if not isinstance(core, RecurrentCore):
            raise TypeError(f"{type(core).__name__} has no initial_state(batch) / step(x_t, state)")
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"chunk length T must be an integer >= 1, got {T!r}")
        if not (math.isfinite(clip) and clip >= 0):
            raise ConfigError(f"--clip: the gradient-norm bound must be >= 0 (0: off), got {clip}")
        if legacy:
            boundary, aux = _legacy_parts(core, optimizer, boundary, aux, legacy)
        check_parts(core, boundary, aux)
        self.core, self.readout, self.loss_fn, self.T = core, readout, loss_fn, T
        self.shapes = state_shapes(core)
        self.boundary, self.aux = boundary, aux
        model_params = [*core.parameters(), *readout.parameters(), *(aux.head.parameters() if aux else ())]
        self.optimizer = optimizer_or_none(model_params, optimizer)
        self.clip, self._clipped = clip, model_params  # what the optimizer updates, clipped together

    # -- the parts, under their earlier names
    @property
    def method(self) -> RecurrentMethod:
        if self.boundary is None:
            return RecurrentMethod.BPTT
        return RecurrentMethod.DNI if self.aux is None else RecurrentMethod.DNI_AUX

    @property
    def synthesizer(self) -> nn.Module | None:
        """M, the boundary's synthesizer (None for truncated BPTT); `synthesizer_optimizer` is M's optimizer."""
        return getattr(self.boundary, "synthesizer", None)

    @property
    def synthesizer_optimizer(self) -> torch.optim.Optimizer | None:
        return getattr(self.boundary, "optimizer", None)

    @property
    def aux_head(self) -> nn.Module | None:
        return getattr(self.aux, "head", None)

    # -- training
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
    ) -> tuple[State, ChunkStats]:
        """One chunk: forward ≤ T steps, one backward pass, one update of the core and (`Bootstrap`) of M.

        Args:
            inputs: (T', B, ...) with 1 ≤ T' ≤ T (the last chunk of a sequence may be shorter).
            targets: (T', B, ...) whatever `loss_fn` takes per step.
            state: the detached state at the start boundary, or None to start a sequence.
            mask: (T', B) weights of the per-step losses, or None.
            last: the chunk ends the sequence: no synthetic gradient at its end ([Note: sequence end]).
            accumulate: leave the core's gradient in `.grad` without stepping (call `step()` later); M still
                trains every chunk.
            start_context, end_context: (B, C) contexts of M at the two boundaries, if M is conditioned.

        Returns:
            (the end state, detached; `ChunkStats`). A boundary whose rule needs the whole sequence
            (`TrueGradient`, `LambdaReturn`) trains through `train_sequence` only.
        """
        rule = self.boundary.rule if self.boundary is not None else None
        if isinstance(rule, TrueGradient | LambdaReturn):
            raise ConfigError(f"a {type(rule).__name__} boundary needs the whole sequence: use train_sequence")
        return self._chunk(inputs, targets, state, mask, last, accumulate, (start_context, end_context))

    def _chunk(
        self,
        inputs: Tensor,
        targets: Tensor,
        state: State | None,
        mask: Tensor | None,
        last: bool,
        accumulate: bool,
        contexts: tuple[Tensor | None, Tensor | None] = (None, None),
        given: Tensor | None = None,
        traced: bool = False,
    ) -> tuple[State, ChunkStats]:
        """`train_chunk`, with M's target `given` (`TrueGradient`) instead of this backward pass's, or `traced`
        (`LambdaReturn`): M not trained here, its start state, target and trace Jacobian kept in the stats."""
        self._check_chunk(inputs, mask)
        boundary = self.boundary
        wants_target = boundary is not None and state is not None
        bootstrap = wants_target and given is None  # the target comes from this backward pass
        if state is None:
            state = self.core.initial_state(inputs.shape[1])
        start = flatten_state(state).detach().requires_grad_(bootstrap)  # (B, D), the start leaf
        step_states: list[State] | None = [] if traced and wants_target and not last else None
        loss, outs, preds, end_state = unroll(
            self.core, self.readout, self.loss_fn, inputs, targets, unflatten_state(start, self.shapes), mask,
            step_states,
        )  # fmt: skip
        end = flatten_state(end_state)  # (B, D), with graph
        jacobian = self._trace_jacobian(inputs, step_states, end_state) if step_states is not None else None
        objective, synthetic = loss, None
        if boundary is not None and not last:
            with torch.no_grad():
                synthetic = boundary.predict(end.detach(), contexts[1])  # ĝ_end (B, D), per-example units
            # ∂/∂θ of ⟨s_end, λĝ/B⟩ is (∂s_end/∂θ)ᵀ λĝ/B: the synthetic gradient enters the backward pass here,
            # scaled by the discount λ ([Note: discount]).
            objective = objective + (end * to_module_grad(boundary.rule.discount * synthetic)).sum()
        stats = ChunkStats(loss=loss.item(), steps=inputs.shape[0], outputs=torch.stack(preds).detach(),
                           synthetic=synthetic)  # fmt: skip
        if self.aux is not None:
            aux_target = synthetic if synthetic is not None else torch.zeros_like(end.detach())
            stats.aux_loss = self.aux.backward(outs, aux_target, self.core)
        with torch.set_grad_enabled(not traced):
            prediction = boundary.predict(start.detach(), contexts[0]) if wants_target else None  # graph to M only
        # [Note: a chunk without signal]: nothing scored, no synthetic gradient, no aux loss -> no update.
        signal = mask is None or bool(mask.any()) or synthetic is not None or self.aux is not None
        target = backward_through(objective, None, start) if bootstrap else given
        if signal and not bootstrap:
            backward_through(objective, None, None)
        if signal and not accumulate:
            self.step()
        if prediction is not None and target is not None:
            self._synthesizer_target(prediction, target, stats, start if traced else None, jacobian)
        return tuple(s.detach() for s in end_state), stats

    def _check_chunk(self, inputs: Tensor, mask: Tensor | None) -> None:
        if not 1 <= inputs.shape[0] <= self.T:
            raise ValueError(f"a chunk has 1..T={self.T} steps, got {inputs.shape[0]}")
        if mask is not None and mask.shape != inputs.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} != (steps, batch) {tuple(inputs.shape[:2])}")

    def _trace_jacobian(self, inputs: Tensor, step_states: list[State], end_state: State) -> TraceJacobian:
        """The product over the chunk's steps of the core's `trace_jacobian`, under the weights of this forward
        pass (before the core's step)."""
        with torch.no_grad():
            nexts = [*step_states[1:], end_state]
            steps = [
                as_trace_jacobian(self.core.trace_jacobian(x, s, n))
                for x, s, n in zip(inputs, step_states, nexts, strict=True)
            ]
            return functools.reduce(lambda acc, j: acc.then(j), steps)

    def _synthesizer_target(
        self, prediction: Tensor, target: Tensor, stats: ChunkStats, start: Tensor | None, jacobian
    ) -> None:
        """M regresses onto `target` now; or, with a `start` (traced), the stats keep what the λ-return needs."""
        assert self.boundary is not None
        stats.target = target.detach()
        if start is None:
            stats.sg_loss, stats.target_cosine = self.boundary.regress(prediction, target, cosine=True)
            return
        stats.start, stats.jacobian = start.detach(), jacobian
        prediction = prediction.detach()
        stats.sg_loss = synthesizer_loss(prediction, stats.target).item()
        stats.target_cosine = batch_cosine(prediction, stats.target).item()

    def lambda_returns(self, stats: list[ChunkStats]) -> tuple[tuple[Tensor, ...], list[Tensor]]:
        """M's predictions and their λ-returns at a sequence's boundaries under this trainer's `LambdaReturn`
        (`sequence_targets.lambda_returns`), from the stats of its chunks after the first."""
        rule = self.boundary.rule if self.boundary is not None else None
        if not isinstance(rule, LambdaReturn):
            raise ConfigError(f"λ-returns need a LambdaReturn boundary, this trainer's rule is {rule!r}")
        return lambda_returns(self.boundary, stats, discount=rule.discount, decay=rule.decay)

    def step(self) -> None:
        """Apply the core's accumulated gradient (after `accumulate=True` chunks), its norm clipped to `clip` if
        set, and clear it."""
        if self.optimizer is not None:
            if self.clip:
                nn.utils.clip_grad_norm_(self._clipped, self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def train_sequence(
        self, inputs: Tensor, targets: Tensor, mask: Tensor | None = None, *, accumulate: bool = False
    ) -> list[ChunkStats]:
        """A whole sequence (S, B, ...) from the initial state, in chunks of T; `accumulate` steps once at the
        end (one update from the whole sequence's chunked gradient). The boundary's rule decides how M trains:
        per chunk (`Bootstrap`), per chunk onto the exact future gradient (`TrueGradient`), or once per sequence
        onto λ-returns (`LambdaReturn`)."""
        rule = self.boundary.rule if self.boundary is not None else None
        traced = isinstance(rule, LambdaReturn)
        true = None  # the true future gradient at every boundary, [Note: true-target ablation]
        if isinstance(rule, TrueGradient):
            true = true_future_gradients(
                self.core, self.readout, self.loss_fn, inputs, targets, self.T, mask, discount=rule.discount
            )
        stats, state = [], None
        for k, lo in enumerate(range(0, inputs.shape[0], self.T)):
            hi = min(lo + self.T, inputs.shape[0])
            m = mask[lo:hi] if mask is not None else None
            given = true[k - 1] if true is not None and k > 0 else None  # boundary k - 1 starts chunk k
            state, s = self._chunk(
                inputs[lo:hi], targets[lo:hi], state, m, hi == inputs.shape[0], accumulate, given=given, traced=traced
            )
            stats.append(s)
        if accumulate:
            self.step()
        if traced and len(stats) > 1:  # one step of M on the whole sequence's λ-returns
            regress_sum(self.boundary, *self.lambda_returns(stats[1:]))
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
        """Weights, optimizer states and M's update count, to resume."""
        return {
            "model": self.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "boundary": self.boundary.training_state() if self.boundary is not None else None,
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.boundary is not None:
            self.boundary.load_training_state(state["boundary"])


def _legacy_parts(
    core: RecurrentCore, optimizer: OptimizerFactory, boundary: Interface | None, aux: AuxTask | None, legacy: dict
) -> tuple[Interface | None, AuxTask | None]:
    """The parts the old keywords describe (`method_parts`), with a DeprecationWarning."""
    unknown = sorted(legacy.keys() - LEGACY_KEYWORDS)
    if unknown:
        raise TypeError(f"TruncatedBPTT() got unexpected keyword argument(s) {', '.join(unknown)}")
    if boundary is not None or aux is not None:
        raise TypeError("TruncatedBPTT: pass boundary=/aux= or the old keywords (method=, ...), not both")
    warnings.warn(
        f"TruncatedBPTT({', '.join(sorted(legacy))}=...) is deprecated: pass boundary=Interface(M, optimizer, "
        "rule=Bootstrap(discount) | TrueGradient(discount=...) | LambdaReturn(discount, decay)) and "
        "aux=AuxTask(head, weight) (or build both with synthgrad.recurrent.method_parts)",
        DeprecationWarning,
        stacklevel=3,
    )
    return method_parts(core, optimizer, **legacy)  # type: ignore[arg-type]
