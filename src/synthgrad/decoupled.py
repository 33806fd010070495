"""Decoupled training of a chain of modules: each module updates at once from a synthetic gradient.

`DecoupledSequential` holds modules f_1 … f_N of the user's own network, one optimizer per module, and a
gradient synthesizer M_i on every cut (the output of f_i for i < N). One `train_step` does, bottom to top
(PAPER.md §1):

    h_i  = f_i(h_{i-1})                       the module's forward pass, on a detached input
    ĝ_i  = M_i(h_i, c)                        synthetic gradient, per-example units ([Note: SG units])
    θ_i ← opt_i(θ_i, (∂h_i/∂θ_i)ᵀ ĝ_i / B)    update at once: f_{i+1} has not even run forward yet
    M_{i-1} regresses onto (∂h_i/∂h_{i-1})ᵀ ĝ_i  (bootstrapped target, from the same backward pass)

(with folding, M_{i-1} regresses onto true gradients instead: [Note: folding in true gradients])

and the top module uses the true loss. With `update_prob = p < 1` each module (with its synthesizer) updates
with probability p after its forward pass (the update-decoupling experiment). With `input_synthesizers`
modules above the first train on a synthetic input I_i(x) instead of the real h_{i-1} (complete unlock); the
real forward pass still runs to provide I_i's regression target and the batch-norm statistics used at test time.

A `DecoupledSequential` with a single module and no synthesizer is plain backprop: the baseline runs through
the same code.

[Note: folding in true gradients]
    An unconditioned synthesizer can at best predict E[∂ℓ/∂h | h], which tends to zero once the layers above are
    calibrated (the label is what the gradient is about), so plain DNI starves the lower modules of signal and
    degrades with depth (PAPER.md §3, §8). The true gradient of a batch does reach module i, just later: in a
    pipeline it arrives N−1−i steps after module i's forward pass, once every module above has run that batch.
    Folding uses it without waiting for it. With `fold_every = k`, every k-th batch s is *folded*: module i keeps
    its graph (with the weights it used, stashed as PipeDream stashes them) until g_{i,s} = ∂ℓ_s/∂h_{i,s} arrives
    from above, and then, in the backward pass of a later step,

        θ_i   gets   J_{i,s}ᵀ (g_{i,s} − ĝ_{i,s})        the residual: batch s now contributes its true gradient
        f_{i-1} gets  g_{i-1,s} = J_{i,s}ᵀ g_{i,s}        sent down: the true gradient one module lower
        M_i   regresses M_i(h_{i,s}) onto g_{i,s}          the synthesizer's target is the true gradient

    where J_{i,s} is module i's Jacobian at batch s's own activations and weights. Summed over time a folded batch
    contributes exactly its true gradient, part of it early (ĝ) and the rest as soon as it is known; an oracle
    synthesizer leaves zero residuals (backprop exactly), a zero synthesizer makes this delayed backprop with the
    pipeline's delays (tests/test_fold.py). Modules stay update-unlocked: nothing waits, the residual is of an
    older batch. The top module is exact: its backward pass produces g_{N-2,s} of a folded batch at once.
    With folding the synthesizers train on these true gradients instead of bootstrapped targets, so no backward
    pass computes (∂h_i/∂h_{i-1})ᵀ ĝ_i: a batch that is not folded costs module i the weight gradient of ĝ only,
    less than a backprop step, and a folded batch one more pass over its stashed graph. Cost and accuracy of every
    k: BENCHMARKS.md, "Recipe ablation". A checkpoint does not hold the batches in flight: a resumed run drops at
    most N−1−i of them per module. With update decoupling (p < 1) a module that skips a step drops what that step
    would have applied, residual included. In the parallel runtime g_{i,s} rides on the target message
    (synthgrad/parallel/stage.py).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from synthgrad.core import (
    backward_through,
    batch_cosine,
    synthesizer_loss,
    to_module_grad,
    to_synthesizer_units,
)
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StepStats:
    """What one training step measured. Lists are indexed by cut (module i's output), length N−1."""

    loss: float
    sg_loss: list[float] = field(default_factory=list)  # NaN where a folding cut received nothing this step
    target_cosine: list[float] = field(default_factory=list)  # cos(ĝ_i, its target), only when diagnosed
    true_cosine: list[float] | None = None  # cos(ĝ_i, true ∂ℓ/∂h_i), only when diagnosed
    input_loss: list[float] = field(default_factory=list)  # complete unlock: L2 of I_i(x) vs real h_{i-1}
    updated: list[bool] = field(default_factory=list)  # which modules updated (update decoupling)


@dataclass
class ModuleStep:
    """What one module's share of a step produced."""

    # (∂h_i/∂h_{i-1})ᵀ ĝ_i in synthesizer units: the bootstrapped target of M_{i-1}. None for i = 0, and with
    # folding, where synthesizers train on true gradients instead (`true_below`).
    carried: Tensor | None
    synthetic: Tensor | None  # ĝ_i = M_i(h_i, c) (with graph to M_i unless folding); None at the top
    output: Tensor  # h_i
    loss: float | None  # the task loss, at the top module only
    # Folding ([Note: folding in true gradients]): g_{i-1,s}, the true gradient (synthesizer units) of the oldest
    # batch module i−1 has in flight, carried down by this step's fold; None when nothing was folded this step.
    true_below: Tensor | None = None


@dataclass
class _Flight:
    """One batch's forward pass through module i, kept until its true gradient has been folded in."""

    output: Tensor  # h_i, with graph (and stashed weights, see `stashed_weights`) to θ_i and the input leaf
    leaf: Tensor  # the detached input it was applied to
    synthetic: Tensor  # ĝ_i (detached, synthesizer units) that module i already applied
    context: Tensor | None  # the synthesizer context of the batch, for M_i's regression onto `true`
    applied: list[Tensor] = field(default_factory=list)  # the weight gradient of ĝ_i module i applied (per param)
    true: Tensor | None = None  # g_{i,s} = ∂ℓ_s/∂h_i (synthesizer units), once it has arrived from above


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
def stashed_weights(module: nn.Module) -> Iterator[None]:
    """Forward passes whose graphs keep their own copy of every parameter and buffer they save for backward.

    The graph can then be back-propagated after the optimizer (or the next forward pass, for batch-norm running
    statistics) has changed the module in place: the gradient is the one at the weights this forward pass used
    (PipeDream's weight stashing), and it still accumulates into the parameters' `.grad`. Costs one copy of
    each saved weight; activations are saved as usual.
    """
    owned = {id(t) for t in (*module.parameters(), *module.buffers())}

    def pack(t: Tensor) -> Tensor:
        base = t._base if t._base is not None else t  # e.g. weight.t() saved by a matrix product
        # Anything else is saved as a detached alias: the same memory and version counter, but no reference to
        # its grad_fn, which for a saved *output* would make a cycle the graph never leaves (a leak per step).
        return t.clone() if id(base) in owned else t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _accumulate_grads(params: Sequence[nn.Parameter], grads: Sequence[Tensor], alpha: float = 1.0) -> None:
    """p.grad += alpha·g for each pair, as autograd would accumulate it (a fresh `.grad` is a copy, never an
    alias)."""
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = g * alpha
            else:
                p.grad.add_(g, alpha=alpha)


def adam(lr: float) -> OptimizerFactory:
    """Adam (the paper's optimizer, PAPER.md §2) at `lr`, fused into one kernel per step.

    The fused implementation is the same update; on CPU it is ~6× faster than the per-tensor loop (8.6 → 1.3 ms
    for 2.9M parameters, one thread), which matters when a stage's own work is what a pipeline divides.
    """

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, fused=True)

    return make


def _optimizer_or_none(params: Iterable[nn.Parameter], factory: OptimizerFactory) -> torch.optim.Optimizer | None:
    params = [p for p in params if p.requires_grad]
    return factory(params) if params else None


class DecoupledSequential(nn.Module):
    """A chain of modules trained with decoupled neural interfaces between consecutive modules.

    Args:
        modules: f_1 … f_N. Any modules; the output of f_i is the input of f_{i+1}.
        synthesizers: N−1 gradient synthesizers, one per cut; M_i maps (h_i, context) -> ĝ_i of h_i's shape.
        loss_fn: (output of f_N, target) -> scalar batch-mean loss.
        optimizer: factory for each module's optimizer (Adam in the paper, PAPER.md §2).
        synthesizer_optimizer: factory for each synthesizer's optimizer; defaults to `optimizer`.
        update_prob: p of the update-decoupling experiment; 1.0 updates every module every step.
        input_synthesizers: complete unlock: N−1 synthesizers; entry i−1 maps (x, context) to f_i's input,
            for i = 2 … N. None trains on real inputs.
        seed: seed of the generator that draws update decisions (checkpointed with the state).
        fold_every: fold the true gradient of every k-th batch into every module as it arrives, later, from
            above ([Note: folding in true gradients]); 0 never. Modules still update at once from ĝ.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        synthesizers: Sequence[nn.Module],
        *,
        loss_fn: LossFn,
        optimizer: OptimizerFactory,
        synthesizer_optimizer: OptimizerFactory | None = None,
        update_prob: float = 1.0,
        input_synthesizers: Sequence[nn.Module] | None = None,
        seed: int = 0,
        fold_every: int = 0,
    ) -> None:
        super().__init__()
        if len(modules) < 1:
            raise ValueError("need at least one module")
        if len(synthesizers) != len(modules) - 1:
            raise ValueError(f"{len(modules)} modules need {len(modules) - 1} synthesizers, got {len(synthesizers)}")
        if input_synthesizers is not None and len(input_synthesizers) != len(modules) - 1:
            raise ValueError(f"complete unlock needs {len(modules) - 1} input synthesizers")
        if not 0.0 < update_prob <= 1.0:
            raise ValueError(f"update_prob must be in (0, 1], got {update_prob}")
        if fold_every < 0:
            raise ValueError(f"fold_every must be >= 0, got {fold_every}")
        if fold_every and input_synthesizers is not None:
            raise ValueError("folding true gradients needs real inputs: it cannot be combined with complete unlock")
        self.stages = nn.ModuleList(modules)
        self.synthesizers = nn.ModuleList(synthesizers)
        self.input_synthesizers = nn.ModuleList(input_synthesizers) if input_synthesizers is not None else None
        self.loss_fn = loss_fn
        self.update_prob = update_prob
        synth_factory = synthesizer_optimizer or optimizer
        self.optimizers = [_optimizer_or_none(m.parameters(), optimizer) for m in self.stages]
        self.synthesizer_optimizers = [_optimizer_or_none(s.parameters(), synth_factory) for s in self.synthesizers]
        self.input_optimizers = (
            [_optimizer_or_none(s.parameters(), synth_factory) for s in self.input_synthesizers]
            if self.input_synthesizers is not None
            else []
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.fold_every = fold_every
        self._flights: list[deque[_Flight]] = [deque() for _ in self.synthesizers]
        self._trainable = [[p for p in m.parameters() if p.requires_grad] for m in self.stages]  # fold passes' inputs

    # ------------------------------------------------------------------ inference
    def forward(self, x: Tensor) -> Tensor:
        """The assembled network on real inputs (evaluation, or locked use)."""
        for m in self.stages:
            x = m(x)
        return x

    @property
    def unlocked(self) -> bool:
        return self.input_synthesizers is not None

    # ------------------------------------------------------------------ training
    # One step is built from four public operations, so that the parallel runtime (one module per process)
    # runs exactly the same maths as `train_step` (one process): draw_updates, train_input_synthesizer,
    # module_step, train_synthesizer.

    def draw_updates(self) -> list[bool]:
        """Which modules update this step (update decoupling); all of them when p = 1 (no random draw)."""
        if self.update_prob >= 1.0:
            return [True] * len(self.stages)
        draws = torch.rand(len(self.stages), generator=self.generator)
        return (draws < self.update_prob).tolist()

    @staticmethod
    def _step(opt: torch.optim.Optimizer | None, update: bool) -> None:
        if opt is None:
            return
        if update:
            opt.step()
        opt.zero_grad(set_to_none=False)

    def train_step(
        self, x: Tensor, target: Tensor, context: Tensor | None = None, *, diagnose: bool = False
    ) -> StepStats:
        """One decoupled step on a batch.

        Args:
            x: (B, ...) network input.
            target: whatever `loss_fn` takes as its second argument (class labels (B,) for classification).
            context: (B, K) synthesizer context (the one-hot label for cDNI), or None.
            diagnose: also compute the true gradient at every cut (one extra locked forward/backward, with
                batch-norm statistics untouched) and report its cosine, and the bootstrapped target's, with the
                synthetic gradient.
        """
        true_grads = self.true_gradients(x, target) if diagnose and len(self.stages) > 1 else None
        updates = self.draw_updates()
        stats = StepStats(loss=float("nan"), updated=updates)
        real = x  # the real activation entering the current module
        below: Tensor | None = None  # ĝ_{i-1}: prediction of the synthesizer under the current module
        for i, module in enumerate(self.stages):
            if self.unlocked and i > 0:
                synthetic_in, in_loss = self.train_input_synthesizer(i, x, real, context, updates[i])
                stats.input_loss.append(in_loss)
                with torch.no_grad():
                    real_out = module(real)  # real path: BN statistics and the next input target
                result = self.module_step(i, synthetic_in, target, context, updates[i], synthetic_input=True)
            else:
                result = self.module_step(i, real, target, context, updates[i])
                real_out = result.output
            if result.loss is not None:
                stats.loss = result.loss
            if below is not None:
                if self.fold_every:  # M_{i-1} regresses onto a true gradient, when one has come down
                    sg_loss, cosine = self.receive_true_gradient(i - 1, result.true_below, updates[i - 1], diagnose)
                else:  # onto the gradient carried back through f_i ([Note: bootstrapped target])
                    sg_loss, cosine = self.train_synthesizer(
                        i - 1, below, result.carried, updates[i - 1], cosine=diagnose
                    )
                stats.sg_loss.append(sg_loss)
                if diagnose:
                    stats.target_cosine.append(cosine)
                if true_grads is not None:
                    stats.true_cosine = (stats.true_cosine or []) + [batch_cosine(below, true_grads[i - 1]).item()]
            below = result.synthetic
            real = real_out.detach()
        self.steps += 1
        return stats

    def module_step(
        self,
        i: int,
        source: Tensor,
        target: Tensor,
        context: Tensor | None,
        update: bool = True,
        *,
        synthetic_input: bool = False,
    ) -> ModuleStep:
        """Module i's whole share of a step: forward on a detached `source`, back-propagate the synthetic
        gradient of its output (or the true loss at the top), and update at once if `update`.

        With `synthetic_input` (complete unlock) batch-norm statistics are left as they were: they describe
        real inputs, which is what evaluation sees. With folding, the same step also folds in the true gradient
        of the oldest batch whose true gradient has arrived ([Note: folding in true gradients]).
        """
        top = i == len(self.stages) - 1
        folding = self.fold_every > 0
        keep = folding and self.folds_now()  # this batch is folded: its graph stays until its true gradient comes
        # Only the bootstrapped target and a folded batch's true gradient need ∂/∂input.
        inp = source.detach().requires_grad_(i > 0 and (keep or not folding))
        below = inp if inp.requires_grad else None
        with frozen_buffers(self.stages[i]) if synthetic_input else contextlib.nullcontext():
            with stashed_weights(self.stages[i]) if keep and not top else contextlib.nullcontext():
                out = self.stages[i](inp)  # the buffers stay frozen until after backward, which reads them
            true_below = None
            if top:
                loss = self.loss_fn(out, target)
                carried, synthetic, loss_value = backward_through(loss, None, below), None, loss.item()
                if folding:  # the top module is exact: the true gradient of a folded batch goes down at once
                    carried, true_below = None, carried
            elif folding:
                with torch.no_grad():  # M_i trains later, on the true gradient, from a fresh prediction
                    synthetic = self.synthesizers[i](out.detach(), context)
                carried, loss_value = None, None
                true_below = self._fold_backward(i, _Flight(out, inp, synthetic, context), keep=keep)
            else:
                synthetic = self.synthesizers[i](out.detach(), context)  # (B, *h_i.shape), graph to M_i
                carried = backward_through(out, to_module_grad(synthetic.detach()), below)
                loss_value = None
        self._step(self.optimizers[i], update)
        return ModuleStep(carried=carried, synthetic=synthetic, output=out, loss=loss_value, true_below=true_below)

    def folds_now(self) -> bool:
        """Whether this step's batch is one whose true gradient gets folded in."""
        return self.fold_every > 0 and self.steps % self.fold_every == 0

    def _fold_backward(self, i: int, flight: _Flight, *, keep: bool) -> Tensor | None:
        """Module i's backward pass with folding: the weight gradient of ĝ_i for this batch, plus the residual of
        the oldest batch whose true gradient has arrived, through the graph and the stashed weights of that
        batch's own forward pass; both land in the parameters' `.grad`. Returns the true gradient that batch
        carries down (synthesizer units), or None.

        The residual's weight gradient is taken as J_sᵀ g_s − (the J_sᵀ ĝ_s applied at step s, kept): the one
        pass over the old graph that carries g_s down gives it too, instead of a second pass for g_s − ĝ_s."""
        flights = self._flights[i]
        old = flights.popleft() if flights and flights[0].true is not None else None
        params = self._trainable[i]
        outputs, grads, inputs = [], [], list(params)
        if keep:  # this batch's ĝ weight gradient is kept, to be taken back out when its true gradient comes
            if params:
                flight.applied = list(
                    torch.autograd.grad(flight.output, params, to_module_grad(flight.synthetic), retain_graph=True)
                )
                _accumulate_grads(params, flight.applied)
            flights.append(flight)
        else:
            outputs.append(flight.output)
            grads.append(to_module_grad(flight.synthetic))
        if old is not None:
            outputs.append(old.output)
            grads.append(to_module_grad(old.true))
            if i > 0:
                inputs.append(old.leaf)
        if outputs and inputs:
            torch.autograd.backward(outputs, grads, inputs=inputs)
        if old is None:
            return None
        _accumulate_grads(params, old.applied, alpha=-1.0)
        if i == 0:
            return None
        true_below, old.leaf.grad = old.leaf.grad, None
        return to_synthesizer_units(true_below)

    def receive_true_gradient(
        self, j: int, true: Tensor | None, update: bool = True, cosine: bool = False
    ) -> tuple[float, float]:
        """Module j receives g_{j,s}, the true gradient of the oldest batch it has in flight (module j+1 folds
        batches in order, each once): it is folded into f_j at its next step, and M_j regresses its current
        prediction for that batch onto it now. Returns (synthesizer loss, cosine), NaN when `true` is None
        (nothing came down this step)."""
        if true is None:
            return float("nan"), float("nan")
        flight = next(f for f in self._flights[j] if f.true is None)
        flight.true = true
        prediction = self.synthesizers[j](flight.output.detach(), flight.context)
        return self.train_synthesizer(j, prediction, true, update, cosine=cosine)

    def train_synthesizer(
        self, j: int, prediction: Tensor, target: Tensor, update: bool = True, *, cosine: bool = True
    ) -> tuple[float, float]:
        """Regress M_j's `prediction` (with graph) onto `target`; returns (synthesizer loss, cosine between them;
        NaN unless `cosine`, which costs ~5% of a step)."""
        loss = synthesizer_loss(prediction, target)
        if prediction.requires_grad:  # a parameter-free synthesizer (an oracle) has nothing to train
            loss.backward()  # reaches M_j only: its input was detached from f_j ([Note: SG loss scale])
            self._step(self.synthesizer_optimizers[j], update)
        cos = batch_cosine(prediction.detach(), target).item() if cosine else float("nan")
        return loss.item(), cos

    def train_input_synthesizer(
        self, i: int, x: Tensor, real_input: Tensor, context: Tensor | None, update: bool = True
    ) -> tuple[Tensor, float]:
        """Complete unlock: I_i(x) regresses onto the real input of module i; returns (I_i(x), loss)."""
        synthetic_in = self.input_synthesizers[i - 1](x, context)
        loss = synthesizer_loss(synthetic_in, real_input)
        loss.backward()
        self._step(self.input_optimizers[i - 1], update)
        return synthetic_in.detach(), loss.item()

    def true_gradients(self, x: Tensor, target: Tensor) -> list[Tensor]:
        """True per-example gradients ∂ℓ/∂h_i at every cut, by a locked forward/backward on real inputs.

        Leaves parameters' `.grad` and batch-norm statistics untouched. Returns N−1 tensors (B, *h_i.shape).
        """
        with frozen_buffers(self), torch.enable_grad():
            h, cuts = x, []
            for m in self.stages[:-1]:
                h = m(h)
                cuts.append(h)
            loss = self.loss_fn(self.stages[-1](h), target)
            grads = torch.autograd.grad(loss, cuts)
        return [g.detach() * x.shape[0] for g in grads]

    # ------------------------------------------------------------------ checkpointing
    def training_state(self) -> dict:
        """Everything needed to resume: weights, optimizer states, the update-draw generator, the step count."""

        def opt_states(opts: list[torch.optim.Optimizer | None]) -> list[dict | None]:
            return [o.state_dict() if o is not None else None for o in opts]

        return {
            "model": self.state_dict(),
            "optimizers": opt_states(self.optimizers),
            "synthesizer_optimizers": opt_states(self.synthesizer_optimizers),
            "input_optimizers": opt_states(self.input_optimizers),
            "generator": self.generator.get_state(),
            "steps": self.steps,
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for key, opts in (
            ("optimizers", self.optimizers),
            ("synthesizer_optimizers", self.synthesizer_optimizers),
            ("input_optimizers", self.input_optimizers),
        ):
            for opt, s in zip(opts, state[key], strict=True):
                if opt is not None:
                    opt.load_state_dict(s)
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])


def infer_shapes(blocks: Sequence[nn.Module], example_input: Tensor) -> list[tuple[int, ...]]:
    """Per-example output shape of every block, from one forward pass in eval mode (no state is changed)."""
    shapes = []
    with torch.no_grad(), frozen_buffers(nn.ModuleList(blocks)):
        training = [b.training for b in blocks]
        for b in blocks:
            b.eval()
        try:
            h = example_input
            for b in blocks:
                h = b(h)
                shapes.append(tuple(h.shape[1:]))
        finally:
            for b, t in zip(blocks, training, strict=True):
                b.train(t)
    return shapes


def decouple(
    model: nn.Sequential | Sequence[nn.Module],
    example_input: Tensor,
    *,
    loss_fn: LossFn = torch.nn.functional.cross_entropy,
    optimizer: OptimizerFactory | None = None,
    lr: float = 1e-4,
    synthesizer_optimizer: OptimizerFactory | None = None,
    synthesizer: SynthesizerSpec | Callable[[tuple[int, ...]], nn.Module] | None = None,
    context_dim: int = 0,
    cuts: Sequence[int] | None = None,
    update_prob: float = 1.0,
    unlock: bool = False,
    input_synthesizer: SynthesizerSpec | None = None,
    seed: int = 0,
    fold_every: int = 0,
) -> DecoupledSequential:
    """Cut a sequential model into decoupled modules, with a synthesizer on every cut.

    Args:
        model: an `nn.Sequential` (or a list of modules); its children are the layers.
        example_input: (B, ...) a batch of inputs (B ≥ 2), used once to infer the shape at every cut.
        loss_fn: batch-mean loss on the top module's output.
        optimizer: factory for every module's optimizer; default `adam(lr)` (PAPER.md §2).
        synthesizer_optimizer: factory for the synthesizers' optimizers; default: as `optimizer`.
        synthesizer: a `SynthesizerSpec`, or a callable mapping a cut's per-example shape to a synthesizer.
            Default: the paper's MLP synthesizer (2×1024, BN) for flat cuts, a conv synthesizer for feature maps.
        context_dim: size of the synthesizer context (num_classes for cDNI), 0 for none.
        cuts: cut after these child indices; None cuts after every child ("decouple every layer").
        update_prob: p of update decoupling.
        unlock: complete unlock: modules above the first train on synthetic inputs from the network input.
        input_synthesizer: spec of the input synthesizers (default: MLP with one hidden layer of 1024).
        fold_every: fold in the true gradient of every k-th batch ([Note: folding in true gradients]); 0 never.

    Example:
        >>> net = decouple(fcn((1, 28, 28), 10, layers=4), x[:2], context_dim=10)
        >>> stats = net.train_step(x, y, one_hot_context(y, 10))
    """
    children = list(model.children()) if isinstance(model, nn.Module) else list(model)
    n = len(children)
    if cuts is None:
        cuts = list(range(n - 1))
    cuts = sorted(set(cuts))
    if any(not 0 <= c < n - 1 for c in cuts):
        raise ValueError(f"cuts must lie in [0, {n - 2}] for a model of {n} children, got {list(cuts)}")
    bounds = [0, *(c + 1 for c in cuts), n]
    blocks: list[nn.Module] = [
        children[a] if b - a == 1 else nn.Sequential(*children[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    shapes = infer_shapes(blocks, example_input)

    def build(spec_or_fn, in_shape, out_shape=None) -> nn.Module:
        if callable(spec_or_fn) and not isinstance(spec_or_fn, SynthesizerSpec):
            return spec_or_fn(in_shape)
        spec = spec_or_fn
        if spec is None:
            spec = SynthesizerSpec(SynthesizerKind.CONV, (128, 128)) if len(in_shape) == 3 else SynthesizerSpec()
        return spec.build(in_shape, out_shape, context_dim=context_dim)

    synths = [build(synthesizer, s) for s in shapes[:-1]]
    input_synths = None
    if unlock:
        ispec = input_synthesizer or SynthesizerSpec(SynthesizerKind.MLP, (1024,))
        x_shape = tuple(example_input.shape[1:])
        input_synths = [ispec.build(x_shape, s, context_dim=context_dim) for s in shapes[:-1]]
    return DecoupledSequential(
        blocks,
        synths,
        loss_fn=loss_fn,
        optimizer=optimizer or adam(lr),
        synthesizer_optimizer=synthesizer_optimizer,
        update_prob=update_prob,
        input_synthesizers=input_synths,
        seed=seed,
        fold_every=fold_every,
    )
