"""A stage: one module of a decoupled chain with everything it owns, and the few operations a step is made of.

A `Stage` holds module f_i (its *block*), the block's optimizer, its outgoing `Interface` (the synthesizer on the
cut above it; None at the top), for complete unlock an `InputInterface`, and its own state: a step counter, the
generator of its update draws, its predictions awaiting targets and its folded batches in flight. Per step t:

    step(source)      h_i = f_i(source); ĝ_i = M_i(h_i, c); back-propagate ĝ_i (the true loss at the top); update
                      at once. Returns h_i and the *message down*: the target of M_{i-1} (the bootstrapped
                      (∂h_i/∂h_{i-1})ᵀ ĝ_i, or with folding the true gradient of an older batch, or None)
    receive(message)  the message from the stage above: M_i regresses onto it (and with folding it is folded in)

`DecoupledSequential.train_step` calls these in lockstep; a `DecoupledSchedule` decides when each runs when the
stages are pipelined (synthgrad/schedule.py in process, synthgrad/parallel/ across processes). Nothing outside a
stage reads its fields.

[Note: folding in true gradients]
    An unconditioned synthesizer can at best predict E[∂ℓ/∂h | h], which tends to zero once the layers above are
    calibrated, so plain DNI starves the lower modules of signal and degrades with depth (PAPER.md §3, §8). The
    true gradient of a batch does reach module i, just later: once every module above has run it. Folding uses
    it without waiting for it (`TrueGradient(every=k)`): every k-th batch s is kept in flight with its graph and
    the weights it used (`stash.stashed_weights`) until g_{i,s} = ∂ℓ_s/∂h_{i,s} arrives, and then, in the
    backward pass of a later step,

        θ_i   gets   J_{i,s}ᵀ (g_{i,s} − ĝ_{i,s})        the residual: batch s now contributes its true gradient
        f_{i-1} gets  g_{i-1,s} = J_{i,s}ᵀ g_{i,s}        sent down: the true gradient one module lower
        M_i   regresses M_i(h_{i,s}) onto g_{i,s}          the synthesizer's target is the true gradient

    Summed over time a folded batch contributes exactly its true gradient; an oracle synthesizer leaves zero
    residuals (backprop exactly), a zero synthesizer makes this delayed backprop with the pipeline's delays (the
    stale-gradient pipeline; tests/test_fold.py). No backward pass needs an input gradient except a folded
    batch's, so a batch that is not folded costs less than a backprop step. The top module is exact: its
    backward pass produces g_{N-2,s} of a folded batch at once. With update decoupling (p < 1) a module that
    skips a step drops what that step would have applied, residual included. A checkpoint holds the batches in
    flight (input, weights, ĝ), and a resumed run rebuilds their graphs (`stash.rebuild`).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from synthgrad.core import accumulate_grads, backward_through, to_module_grad, to_synthesizer_units
from synthgrad.interface import Bootstrap, InputInterface, Interface, TargetRule
from synthgrad.optim import OptimizerFactory, optimizer_or_none, step_and_clear
from synthgrad.stash import frozen_buffers, rebuild, stashed_weights

LossFn = Callable[[Tensor, Tensor], Tensor]
BOOTSTRAP = Bootstrap()


@dataclass
class StepResult:
    """What one stage's step produced."""

    output: Tensor  # h_i, with graph
    down: Tensor | None  # the message for the stage below (synthesizer units), see the module doc
    synthetic: Tensor | None = None  # ĝ_i as applied (detached unless bootstrapped); None at the top
    loss: float | None = None  # the task loss, at the top only


@dataclass
class _Pending:
    """A step whose message from above has not been received yet."""

    step: int
    update: bool  # the step's update draw: it also gates M_i's step on that message
    h: Tensor | None = None  # the activation M_i read (bootstrap only), detached
    context: Tensor | None = None
    prediction: Tensor | None = None  # with graph; valid while M_i has not stepped since (`version`)
    version: int = 0


@dataclass
class _Flight:
    """A folded batch's forward pass through the block, kept until its true gradient has been folded in."""

    output: Tensor  # h_i, with graph to the stashed weights and the input leaf
    leaf: Tensor  # the detached input it was applied to
    weights: dict[str, Tensor]  # the snapshot the graph saved (to rebuild it after a restart)
    synthetic: Tensor  # ĝ_i (detached, synthesizer units) that the module already applied
    context: Tensor | None
    applied: list[Tensor] = field(default_factory=list)  # the weight gradient of ĝ_i applied (per parameter)
    true: Tensor | None = None  # g_{i,s} (synthesizer units), once it has arrived from above


class Stage(nn.Module):
    """Module `index` of a chain of `count` modules, with its optimizer, outgoing interface and own state.

    Args:
        block: f_i, any module.
        optimizer: factory for the block's optimizer.
        interface: the cut above (None for the top stage).
        rule: the chain's target rule (the top stage has no interface but must know what to send down).
        loss_fn: (output, target) -> batch-mean loss, used by the top stage.
        input_interface: complete unlock: I_i for i > 0, else None.
        update_prob: p of update decoupling; every stage draws the same `count` numbers per step from a generator
            seeded with `seed` and keeps its own, so stages in separate processes agree without talking.
    """

    def __init__(
        self,
        block: nn.Module,
        optimizer: OptimizerFactory,
        *,
        index: int,
        count: int,
        interface: Interface | None = None,
        rule: TargetRule = BOOTSTRAP,
        loss_fn: LossFn | None = None,
        input_interface: InputInterface | None = None,
        update_prob: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (interface is None) != (index == count - 1):
            raise ValueError("every stage but the top one needs an interface")
        self.block, self.interface, self.input_interface = block, interface, input_interface
        self.index, self.count, self.rule, self.loss_fn, self.update_prob = index, count, rule, loss_fn, update_prob
        self.optimizer = optimizer_or_none(block.parameters(), optimizer)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.pending: deque[_Pending] = deque()
        self.flights: deque[_Flight] = deque()
        self._trainable = [p for p in block.parameters() if p.requires_grad]

    @property
    def top(self) -> bool:
        return self.index == self.count - 1

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)

    def draw_update(self) -> bool:
        """Whether this stage updates at this step (update decoupling); always when p = 1 (no draw)."""
        if self.update_prob >= 1.0:
            return True
        draws = torch.rand(self.count, generator=self.generator)
        return bool(draws[self.index] < self.update_prob)

    # ------------------------------------------------------------------ one step
    def step(
        self, source: Tensor, target: Tensor, context: Tensor | None, update: bool, *, synthetic_input: bool = False
    ) -> StepResult:
        """Forward on a detached `source`, back-propagate ĝ (the true loss at the top) and update at once if
        `update`. With `synthetic_input` (complete unlock) batch-norm statistics are left as they were: they
        describe real inputs, which is what evaluation sees."""
        keep = self.rule.keeps(self.steps)  # a folded batch: its graph stays until its true gradient comes
        carries = self.rule.carries_input_gradient
        sends = carries and self.rule.targets(self.steps)  # [Note: sparse targets] in interface.py
        inp = source.detach().requires_grad_(self.index > 0 and (keep or sends))
        below = inp if inp.requires_grad else None
        h = None  # the detached output M_i reads for a bootstrapped target
        with frozen_buffers(self.block) if synthetic_input else contextlib.nullcontext():
            with stashed_weights(self.block) if keep and not self.top else contextlib.nullcontext() as weights:
                out = self.block(inp)  # the buffers stay frozen until after backward, which reads them
            if self.top:
                loss = self.loss_fn(out, target)
                result = StepResult(out, backward_through(loss, None, below), loss=loss.item())
            elif carries:  # bootstrap: the backward pass of ĝ also yields the target of the cut below
                closed = self.interface.closed_form  # else its fit reuses this prediction's graph to M_i
                h = out.detach()  # the one tensor M_i reads now and at its fit, which may reuse what it computed
                synthetic = self.interface.predict(h, context, graph=not closed)  # (B, *h.shape)
                down = backward_through(out, to_module_grad(synthetic.detach()), below)
                result = StepResult(out, down, synthetic)
            else:
                with torch.no_grad():  # M_i trains later, on the true gradient, from a fresh prediction
                    synthetic = self.interface.predict(out.detach(), context)
                down = self._fold_backward(_Flight(out, inp, weights, synthetic, context), keep=keep)
                result = StepResult(out, down, synthetic)
        step_and_clear(self.optimizer, update)
        if not self.top:
            awaited = carries and self.rule.targets(self.steps)  # the stage above sends this step's target
            prediction = result.synthetic if awaited else None
            self.pending.append(
                _Pending(self.steps, update, h if awaited else None, context, prediction, self.interface.updates)
            )
        self.steps += 1
        return result

    def _fold_backward(self, flight: _Flight, *, keep: bool) -> Tensor | None:
        """The backward pass with folding: the weight gradient of ĝ for this batch, plus the residual of the oldest
        batch whose true gradient has arrived, through that batch's own graph and weights; both land in `.grad`.
        Returns the true gradient that batch carries down (synthesizer units), or None.

        The residual's weight gradient is J_sᵀ g_s − (the J_sᵀ ĝ_s applied at step s, kept): the one pass over
        the old graph that carries g_s down gives it too, instead of a second pass for g_s − ĝ_s."""
        old = self.flights.popleft() if self.flights and self.flights[0].true is not None else None
        params, zero = self._trainable, self.interface.zero
        outputs, grads, inputs = [], [], list(params)
        if keep:  # this batch's ĝ weight gradient is kept, to be taken back out when its true gradient comes
            if params and not zero:
                grad = to_module_grad(flight.synthetic)
                flight.applied = list(torch.autograd.grad(flight.output, params, grad, retain_graph=True))
                accumulate_grads(params, flight.applied)
            self.flights.append(flight)
        elif not zero:
            outputs.append(flight.output)
            grads.append(to_module_grad(flight.synthetic))
        if old is not None:
            outputs.append(old.output)
            grads.append(to_module_grad(old.true))
            if self.index > 0:
                inputs.append(old.leaf)
        if outputs and inputs:
            torch.autograd.backward(outputs, grads, inputs=inputs)
        if old is None:
            return None
        if old.applied:
            accumulate_grads(params, old.applied, alpha=-1.0)
        if self.index == 0:
            return None
        true_below, old.leaf.grad = old.leaf.grad, None
        return to_synthesizer_units(true_below)

    # ------------------------------------------------------------------ the message from above
    def receive(self, message: Tensor | None, *, cosine: bool = False) -> tuple[float, float]:
        """The message of the oldest step still waiting for one: M_i regresses onto it (with folding it is also
        folded in at the next step). Returns (synthesizer loss, cosine); NaN when a folding stage's message
        carried nothing."""
        p = self.pending.popleft()
        if message is None and self.rule.carries_input_gradient:  # a step without a target (sparse targets)
            return float("nan"), float("nan")
        if not self.rule.carries_input_gradient:  # folding: the true gradient of the oldest batch in flight
            if message is None:
                return float("nan"), float("nan")
            flight = next(f for f in self.flights if f.true is None)
            flight.true = message
            return self.interface.fit(flight.output.detach(), flight.context, message, p.update, cosine=cosine)
        fresh = p.version == self.interface.updates  # else M_i has stepped since the prediction: predict anew
        prediction = p.prediction if fresh else None
        return self.interface.fit(p.h, p.context, message, p.update, prediction=prediction, cosine=cosine)

    def awaits_true_gradient(self) -> int:
        """Folded batches whose true gradient has not arrived yet."""
        return sum(f.true is None for f in self.flights)

    # ------------------------------------------------------------------ complete unlock
    def train_input(
        self, x: Tensor, real: Tensor, context: Tensor | None, update: bool
    ) -> tuple[Tensor, float, Tensor]:
        """I_i regresses onto the real input of a step, which also runs forward for real (batch-norm statistics,
        and the real input of the stage above). Returns (I_i(x), its loss, f_i(real))."""
        synthetic_in, loss = self.input_interface.regress(x, real, context, update)
        with torch.no_grad():
            real_out = self.block(real)
        return synthetic_in, loss, real_out

    # ------------------------------------------------------------------ checkpoint
    def training_state(self) -> dict:
        """Everything this stage needs to continue exactly: weights, optimizers, draws, the step count, the
        steps awaiting a message and the folded batches in flight."""
        pending = [
            {"step": p.step, "update": p.update, "h": p.h, "context": p.context, "version": p.version}
            for p in self.pending
        ]
        flights = [
            {"leaf": f.leaf.detach(), "weights": f.weights, "synthetic": f.synthetic, "context": f.context,
             "applied": f.applied, "true": f.true}
            for f in self.flights
        ]  # fmt: skip
        return {
            "module": self.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "interface": self.interface.training_state() if self.interface is not None else None,
            "input_interface": self.input_interface.training_state() if self.input_interface is not None else None,
            "generator": self.generator.get_state(),
            "steps": self.steps,
            "pending": pending,
            "flights": flights,
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["module"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        for part, key in ((self.interface, "interface"), (self.input_interface, "input_interface")):
            if part is not None:
                part.load_training_state(state[key])
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])
        self.pending = deque(_Pending(**p) for p in state["pending"])
        self.flights = deque(self._rebuilt(f) for f in state["flights"])

    def _rebuilt(self, saved: dict) -> _Flight:
        """A folded batch from a checkpoint, its graph recomputed with the weights it used."""
        leaf = saved["leaf"].detach().requires_grad_(self.index > 0)
        output, weights = rebuild(self.block, saved["weights"], leaf)
        return _Flight(
            output, leaf, weights, saved["synthetic"], saved["context"], list(saved["applied"]), saved["true"]
        )


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN if none)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")
