"""Decoupled training of a chain of modules in one process: each module updates at once from a synthetic gradient.

`DecoupledSequential` is a chain of `Stage`s (synthgrad/stage.py). One `train_step` runs them in lockstep, bottom
to top (PAPER.md §1):

    h_i  = f_i(h_{i-1})                       the module's forward pass, on a detached input
    ĝ_i  = M_i(h_i, c)                        synthetic gradient, per-example units ([Note: SG units])
    θ_i ← opt_i(θ_i, (∂h_i/∂θ_i)ᵀ ĝ_i / B)    update at once: f_{i+1} has not even run forward yet
    M_{i-1} regresses onto the message f_i sends down: (∂h_i/∂h_{i-1})ᵀ ĝ_i (bootstrapped target), or with
    folding the true gradient of an older batch ([Note: folding in true gradients] in stage.py)

and the top module uses the true loss. With `update_prob = p < 1` each module (with its synthesizer) updates
with probability p after its forward pass (the update-decoupling experiment). With input synthesizers, modules
above the first train on a synthetic input I_i(x) instead of the real h_{i-1} (complete unlock); the real forward
pass still runs to provide I_i's regression target and the batch-norm statistics used at test time. A chain of
one module is plain backprop: the baseline runs through the same code. Pipelined, with messages arriving up to S
steps late, the same stages run under a `DecoupledSchedule` (synthgrad/schedule.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from synthgrad.core import batch_cosine
from synthgrad.interface import Bootstrap, InputInterface, Interface, TargetRule, TrueGradient
from synthgrad.optim import OptimizerFactory, adam, batched_steps
from synthgrad.stage import LossFn, Stage
from synthgrad.stash import frozen_buffers
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec


@dataclass
class StepStats:
    """What one training step measured. Lists are indexed by cut (module i's output), length N−1."""

    loss: float
    sg_loss: list[float] = field(default_factory=list)  # NaN where a folding cut received nothing this step
    target_cosine: list[float] = field(default_factory=list)  # cos(ĝ_i, its target), only when diagnosed
    true_cosine: list[float] | None = None  # cos(ĝ_i, true ∂ℓ/∂h_i), only when diagnosed
    input_loss: list[float] = field(default_factory=list)  # complete unlock: L2 of I_i(x) vs real h_{i-1}
    updated: list[bool] = field(default_factory=list)  # which modules updated (update decoupling)


def chain_rule(fold_every: int, rule: TargetRule | None, target_every: int = 1) -> TargetRule:
    """The target rule of a chain: `rule`, else folding every `fold_every`-th batch, else the bootstrap (of every
    `target_every`-th batch's target, [Note: sparse targets] in interface.py)."""
    if rule is not None:
        return rule
    if fold_every < 0:
        raise ValueError(f"fold_every must be >= 0, got {fold_every}")
    if fold_every and target_every != 1:
        raise ValueError("target_every thins bootstrapped targets; with folding the targets are the folded batches'")
    return TrueGradient(every=fold_every) if fold_every else Bootstrap(every=target_every)


class DecoupledSequential(nn.Module):
    """A chain of modules trained with decoupled neural interfaces between consecutive modules.

    Args:
        modules: f_1 … f_N. Any modules; the output of f_i is the input of f_{i+1}.
        synthesizers: N−1 gradient synthesizers, one per cut; M_i maps (h_i, context) -> ĝ_i of h_i's shape
            (None: a zero synthetic gradient).
        loss_fn: (output of f_N, target) -> scalar batch-mean loss.
        optimizer: factory for each module's optimizer (Adam in the paper, PAPER.md §2).
        synthesizer_optimizer: factory for each synthesizer's optimizer; defaults to `optimizer`.
        update_prob: p of the update-decoupling experiment; 1.0 updates every module every step.
        input_synthesizers: complete unlock: N−1 synthesizers; entry i−1 maps (x, context) to f_i's input,
            for i = 2 … N. None trains on real inputs.
        seed: seed of the generators that draw update decisions (checkpointed with the state).
        fold_every: fold the true gradient of every k-th batch in as it arrives ([Note: folding in true
            gradients]); 0 never. Shorthand for `rule=TrueGradient(every=k)`.
        rule: the target rule of every cut (default: the bootstrap, or folding per `fold_every`).
        target_every: the bootstrap's synthesizers train on every k-th batch's target only ([Note: sparse
            targets] in interface.py); 1 on every batch's. Shorthand for `rule=Bootstrap(every=k)`.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        synthesizers: Sequence[nn.Module | None],
        *,
        loss_fn: LossFn,
        optimizer: OptimizerFactory,
        synthesizer_optimizer: OptimizerFactory | None = None,
        update_prob: float = 1.0,
        input_synthesizers: Sequence[nn.Module] | None = None,
        seed: int = 0,
        fold_every: int = 0,
        rule: TargetRule | None = None,
        target_every: int = 1,
    ) -> None:
        super().__init__()
        n = len(modules)
        rule = chain_rule(fold_every, rule, target_every)
        if n < 1:
            raise ValueError("need at least one module")
        if len(synthesizers) != n - 1:
            raise ValueError(f"{n} modules need {n - 1} synthesizers, got {len(synthesizers)}")
        if input_synthesizers is not None and len(input_synthesizers) != n - 1:
            raise ValueError(f"complete unlock needs {n - 1} input synthesizers")
        if not 0.0 < update_prob <= 1.0:
            raise ValueError(f"update_prob must be in (0, 1], got {update_prob}")
        if isinstance(rule, TrueGradient) and input_synthesizers is not None:
            raise ValueError("folding true gradients needs real inputs: it cannot be combined with complete unlock")
        synth_factory = synthesizer_optimizer or optimizer
        stages = []
        for i, block in enumerate(modules):
            interface = Interface(synthesizers[i], synth_factory, rule=rule) if i < n - 1 else None
            unlock = None
            if input_synthesizers is not None and i > 0:
                unlock = InputInterface(input_synthesizers[i - 1], synth_factory)
            stages.append(
                Stage(block, optimizer, index=i, count=n, interface=interface, rule=rule, loss_fn=loss_fn,
                      input_interface=unlock, update_prob=update_prob, seed=seed)
            )  # fmt: skip
        self.stages = nn.ModuleList(stages)
        self.loss_fn, self.rule, self.update_prob = loss_fn, rule, update_prob

    # ------------------------------------------------------------------ the parts
    @property
    def blocks(self) -> list[nn.Module]:
        """f_1 … f_N."""
        return [s.block for s in self.stages]

    @property
    def synthesizers(self) -> nn.ModuleList:
        """M_1 … M_{N-1} (a view; None entries are zero synthesizers)."""
        return nn.ModuleList([s.interface.synthesizer for s in self.stages[:-1]])

    @property
    def input_synthesizers(self) -> nn.ModuleList | None:
        if not self.unlocked:
            return None
        return nn.ModuleList([s.input_interface.synthesizer for s in self.stages[1:]])

    @property
    def unlocked(self) -> bool:
        return len(self.stages) > 1 and self.stages[1].input_interface is not None

    @property
    def steps(self) -> int:
        return self.stages[0].steps

    # ------------------------------------------------------------------ inference
    def forward(self, x: Tensor) -> Tensor:
        """The assembled network on real inputs (evaluation, or locked use)."""
        for stage in self.stages:
            x = stage.block(x)
        return x

    # ------------------------------------------------------------------ training
    def train_step(
        self, x: Tensor, target: Tensor, context: Tensor | None = None, *, diagnose: bool = False
    ) -> StepStats:
        """One decoupled step on a batch, every stage in lockstep.

        Args:
            x: (B, ...) network input.
            target: whatever `loss_fn` takes as its second argument (class labels (B,) for classification).
            context: (B, K) synthesizer context (the one-hot label for cDNI), or None.
            diagnose: also compute the true gradient at every cut (one extra locked forward/backward, with
                batch-norm statistics untouched) and report its cosine, and the target's, with ĝ.
        """
        with batched_steps():  # one fused update for the whole chain: [Note: batched optimizer steps] in optim.py
            return self._lockstep(x, target, context, diagnose)

    def _lockstep(self, x: Tensor, target: Tensor, context: Tensor | None, diagnose: bool) -> StepStats:
        true_grads = self.true_gradients(x, target) if diagnose and len(self.stages) > 1 else None
        updates = [stage.draw_update() for stage in self.stages]
        stats = StepStats(loss=float("nan"), updated=updates)
        real, below = x, None  # the real activation entering the current module; ĝ of the module under it
        for i, stage in enumerate(self.stages):
            if self.unlocked and i > 0:
                synthetic_in, in_loss, real_out = stage.train_input(x, real, context, updates[i])
                stats.input_loss.append(in_loss)
                result = stage.step(synthetic_in, target, context, updates[i], synthetic_input=True)
            else:
                result = stage.step(real, target, context, updates[i])
                real_out = result.output
            if result.loss is not None:
                stats.loss = result.loss
            if i > 0:  # M_{i-1} regresses onto what f_i sent down
                sg_loss, cosine = self.stages[i - 1].receive(result.down, cosine=diagnose)
                stats.sg_loss.append(sg_loss)
                if diagnose:
                    stats.target_cosine.append(cosine)
                if true_grads is not None:
                    stats.true_cosine = (stats.true_cosine or []) + [batch_cosine(below, true_grads[i - 1]).item()]
            below = result.synthetic
            real = real_out.detach()
        return stats

    def true_gradients(self, x: Tensor, target: Tensor) -> list[Tensor]:
        """True per-example gradients ∂ℓ/∂h_i at every cut, by a locked forward/backward on real inputs.

        Leaves parameters' `.grad` and batch-norm statistics untouched. Returns N−1 tensors (B, *h_i.shape).
        """
        with frozen_buffers(self), torch.enable_grad():
            h, cuts = x, []
            for stage in self.stages[:-1]:
                h = stage.block(h)
                cuts.append(h)
            loss = self.loss_fn(self.stages[-1].block(h), target)
            grads = torch.autograd.grad(loss, cuts)
        return [g.detach() * x.shape[0] for g in grads]

    # ------------------------------------------------------------------ checkpointing
    def training_state(self) -> dict:
        """Everything needed to resume exactly: every stage's weights, optimizers, draws, step count and the
        folded batches in flight."""
        return {"stages": [stage.training_state() for stage in self.stages]}

    def load_training_state(self, state: dict) -> None:
        for stage, s in zip(self.stages, state["stages"], strict=True):
            stage.load_training_state(s)


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


def cut(model: nn.Sequential | Sequence[nn.Module], cuts: Sequence[int] | None) -> list[nn.Module]:
    """The children of `model` grouped into blocks, cut after the children in `cuts` (None: after every one)."""
    children = list(model.children()) if isinstance(model, nn.Module) else list(model)
    n = len(children)
    cuts = sorted(set(range(n - 1) if cuts is None else cuts))
    if any(not 0 <= c < n - 1 for c in cuts):
        raise ValueError(f"cuts must lie in [0, {n - 2}] for a model of {n} children, got {list(cuts)}")
    bounds = [0, *(c + 1 for c in cuts), n]
    return [
        children[a] if b - a == 1 else nn.Sequential(*children[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)
    ]


SynthesizerChoice = SynthesizerSpec | Callable[[tuple[int, ...]], nn.Module | None] | None


def _synthesizer(choice: SynthesizerChoice, in_shape: tuple[int, ...], context_dim: int) -> nn.Module | None:
    """The synthesizer of a cut of per-example shape `in_shape`: the callable's, the spec's, or the default
    (a conv synthesizer for feature maps, else `SynthesizerSpec()`: the paper's MLP, token-wise on (T, D))."""
    if callable(choice) and not isinstance(choice, SynthesizerSpec):
        return choice(in_shape)
    spec = choice
    if spec is None:
        spec = SynthesizerSpec(SynthesizerKind.CONV, (128, 128)) if len(in_shape) == 3 else SynthesizerSpec()
    return spec.build(in_shape, context_dim=context_dim)


def decouple(
    model: nn.Sequential | Sequence[nn.Module],
    example_input: Tensor,
    *,
    loss_fn: LossFn = torch.nn.functional.cross_entropy,
    optimizer: OptimizerFactory | None = None,
    lr: float = 1e-4,
    synthesizer_optimizer: OptimizerFactory | None = None,
    synthesizer: SynthesizerChoice = None,
    context_dim: int = 0,
    cuts: Sequence[int] | None = None,
    update_prob: float = 1.0,
    unlock: bool = False,
    input_synthesizer: SynthesizerSpec | None = None,
    seed: int = 0,
    fold_every: int = 0,
    rule: TargetRule | None = None,
    target_every: int = 1,
) -> DecoupledSequential:
    """Cut a sequential model into decoupled modules, with a synthesizer on every cut.

    Args:
        model: an `nn.Sequential` (or a list of modules); its children are the layers.
        example_input: (B, ...) a batch of inputs (B ≥ 2), used once to infer the shape at every cut.
        loss_fn: batch-mean loss on the top module's output.
        optimizer: factory for every module's optimizer; default `adam(lr)` (PAPER.md §2).
        synthesizer_optimizer: factory for the synthesizers' optimizers; default: as `optimizer`.
        synthesizer: a `SynthesizerSpec`, or a callable mapping a cut's per-example shape to a synthesizer (or
            to None, a zero synthetic gradient). Default: the paper's MLP synthesizer (2×1024, BN) for flat cuts,
            a conv synthesizer for feature maps.
        context_dim: size of the synthesizer context (num_classes for cDNI), 0 for none.
        cuts: cut after these child indices; None cuts after every child ("decouple every layer").
        update_prob: p of update decoupling.
        unlock: complete unlock: modules above the first train on synthetic inputs from the network input.
        input_synthesizer: spec of the input synthesizers (default: MLP with one hidden layer of 1024).
        fold_every: fold in the true gradient of every k-th batch ([Note: folding in true gradients]); 0 never.
        rule: the target rule of every cut, instead of `fold_every`.
        target_every: synthesizers train on every k-th batch's bootstrapped target ([Note: sparse targets]).

    Example:
        >>> net = decouple(fcn((1, 28, 28), 10, layers=4), x[:2], context_dim=10)
        >>> stats = net.train_step(x, y, one_hot_context(y, 10))
    """
    blocks = cut(model, cuts)
    shapes = infer_shapes(blocks, example_input)
    synths = [_synthesizer(synthesizer, s, context_dim) for s in shapes[:-1]]
    input_synths = None
    if unlock:
        ispec = input_synthesizer or SynthesizerSpec(SynthesizerKind.MLP, (1024,))
        x_shape = tuple(example_input.shape[1:])
        input_synths = [ispec.build(x_shape, s, context_dim=context_dim) for s in shapes[:-1]]
    return DecoupledSequential(
        blocks, synths, loss_fn=loss_fn, optimizer=optimizer or adam(lr), synthesizer_optimizer=synthesizer_optimizer,
        update_prob=update_prob, input_synthesizers=input_synths, seed=seed, fold_every=fold_every, rule=rule,
        target_every=target_every,
    )  # fmt: skip
