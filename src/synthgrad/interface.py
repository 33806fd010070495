"""The interface: one cut between two modules, where a synthesizer stands in for what has not arrived yet.

An `Interface` is the paper's central noun (PAPER.md §1): the synthesizer M that predicts the gradient at the cut
from local information (the activation h and a context c), the optimizer that trains M, and the *target rule*
that says what M regresses onto. The same object serves the feed-forward chain (`synthgrad.stage`), the boundary
between two chunks of a recurrent core (`synthgrad.recurrent.bptt`) and the message between two networks
(`synthgrad.recurrent.multinet`). An `InputInterface` is the forward counterpart for complete unlock: a
synthesizer I that predicts a module's input from the network input.

Target rules are small values, not flags; each names where M's target comes from:

    Bootstrap(discount)         the module above's synthetic gradient carried back through it, scaled by λ
                                (PAPER.md §1, §4; [Note: bootstrapped target] in synthgrad/core.py)
    TrueGradient(every, ...)    the exact gradient, when it arrives: in a chain, that of every k-th batch, which
                                is also folded into the module ([Note: folding in true gradients] in stage.py);
                                on a recurrent core, the exact λ-discounted future gradient (an oracle); between
                                two networks, the receiving network's gradient
    LambdaReturn(discount, μ)   TD(μ) traces over a recurrent sequence ([Note: synthesizer traces])

[Note: sparse targets]
    `Bootstrap(every=k)` trains M on the target of every k-th batch only. The module above then computes the
    gradient of its input on those batches alone; on the others its backward pass stops at its weights, and nothing
    travels down. In a pipeline that is the module's most expensive product it can skip (one of its layers' three
    matrix products), and the link carries 1/k of the targets. The modules' own updates are unchanged: every batch
    still applies ĝ. What it costs is M's training signal, k times sparser; k = 1 is the paper's rule.

An interface without a synthesizer predicts exactly zero: with `TrueGradient(every=1)` that is delayed backprop,
the stale-gradient pipeline (PipeDream's weight stashing) DNI is measured against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from synthgrad.core import batch_cosine, synthesizer_loss
from synthgrad.errors import ConfigError
from synthgrad.optim import OptimizerFactory, optimizer_or_none, step_and_clear


@dataclass(frozen=True)
class Bootstrap:
    """M regresses onto the gradient carried back through the module above, δ = (∂h'/∂h)ᵀ λ ĝ' (PAPER.md §1), of
    every `every`-th batch ([Note: sparse targets])."""

    discount: float = 1.0  # λ on the synthetic gradient where it enters a backward pass ([Note: discount])
    every: int = 1

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"a bootstrapped target needs every >= 1 (0 would never train M), got {self.every}")

    def keeps(self, step: int) -> bool:
        """Whether batch `step` stays in flight for a true gradient (never: targets come from the next module)."""
        return False

    def targets(self, step: int) -> bool:
        """Whether the backward pass of batch `step` carries a target down to the cut below."""
        return step % self.every == 0

    @property
    def carries_input_gradient(self) -> bool:
        """The backward pass of the module above carries a gradient down (of every `every`-th batch): it is this
        cut's target."""
        return True


@dataclass(frozen=True)
class TrueGradient:
    """M regresses onto the true gradient of every `every`-th batch when it arrives (and, in a chain, the module
    folds it in); on a recurrent core, onto the exact future gradient discounted by `discount`."""

    every: int = 1
    discount: float = 1.0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"a true-gradient target needs every >= 1 (0 would never train M), got {self.every}")

    def keeps(self, step: int) -> bool:
        return step % self.every == 0

    def targets(self, step: int) -> bool:
        """Targets travel with folded batches ([Note: fold timing] in schedule.py), never with a step's own pass."""
        return False

    @property
    def carries_input_gradient(self) -> bool:
        """Only a kept batch's true gradient goes down; other backward passes stop at the module's weights."""
        return False


@dataclass(frozen=True)
class LambdaReturn:
    """TD(μ) synthesizer traces on a recurrent sequence ([Note: synthesizer traces], recurrent/sequence_targets.py)."""

    discount: float = 1.0
    decay: float = 1.0  # μ in [0, 1]; 0 is the plain bootstrap with one step of M per sequence

    def keeps(self, step: int) -> bool:
        return False

    def targets(self, step: int) -> bool:
        return True

    @property
    def carries_input_gradient(self) -> bool:
        return True


TargetRule = Bootstrap | TrueGradient | LambdaReturn


class Interface(nn.Module):
    """One cut: a gradient synthesizer, its optimizer, its context and its target rule.

    Args:
        synthesizer: maps (h (B, ...), context (B, C) or None) -> ĝ of h's shape, in per-example units
            ([Note: SG units]); None predicts exactly zero and trains nothing.
        optimizer: factory for the synthesizer's optimizer.
        rule: the target rule (default `Bootstrap()`).
    """

    def __init__(
        self,
        synthesizer: nn.Module | None,
        optimizer: OptimizerFactory | None = None,
        *,
        rule: TargetRule = Bootstrap(),
    ) -> None:
        super().__init__()
        self.synthesizer = synthesizer
        params = synthesizer.parameters() if synthesizer is not None else ()
        self.optimizer = optimizer_or_none(params, optimizer) if optimizer is not None else None
        self.rule = rule
        self.updates = 0  # optimizer steps of M so far: a prediction made before the last one is stale
        self.allow_closed_form = True  # False: fit through autograd even where M offers a closed form (benchmarks)

    @property
    def zero(self) -> bool:
        """Whether this interface predicts exactly zero (no synthesizer)."""
        return self.synthesizer is None

    @property
    def closed_form(self) -> bool:
        """Whether `fit` writes M's gradient out ([Note: closed-form fit] in synthesizers/flat.py), so that the
        predictions it regresses need no graph."""
        synth = self.synthesizer
        offered = self.allow_closed_form and hasattr(synth, "accumulate_fit")
        return offered and all(p.requires_grad for p in synth.parameters())

    def predict(self, h: Tensor, context: Tensor | None = None, *, graph: bool = True) -> Tensor:
        """ĝ = M(h, c), with graph to M's parameters unless `graph` is False (detach `h` first: M must not reach
        the module)."""
        if self.synthesizer is None:
            return torch.zeros_like(h)
        with contextlib.nullcontext() if graph else torch.no_grad():
            return self.synthesizer(h, context)

    def fit(
        self,
        h: Tensor,
        context: Tensor | None,
        target: Tensor,
        update: bool = True,
        *,
        prediction: Tensor | None = None,
        cosine: bool = False,
    ) -> tuple[float, float]:
        """Regress M(h, c) onto `target` and step M if `update`, as `regress`; `prediction` is M(h, c) if it was
        made already (by `predict`, with graph unless `closed_form`), since M last stepped."""
        if not self.closed_form:
            return self.regress(self.predict(h, context) if prediction is None else prediction, target, update,
                                cosine=cosine)  # fmt: skip
        with torch.no_grad():
            if prediction is None:
                prediction = self.synthesizer(h, context)
            loss = self.synthesizer.accumulate_fit(h, context, prediction, target)
        step_and_clear(self.optimizer, update)
        self.updates += int(update)
        cos = batch_cosine(prediction, target).item() if cosine else float("nan")
        return loss.item(), cos

    def regress(
        self, prediction: Tensor, target: Tensor, update: bool = True, *, cosine: bool = False
    ) -> tuple[float, float]:
        """Regress `prediction` (made by `predict`) onto `target` and step M if `update`; returns (synthesizer
        loss, cosine between them, NaN unless `cosine`, which costs ~5% of a step)."""
        loss = synthesizer_loss(prediction, target)
        if prediction.requires_grad:  # a parameter-free synthesizer (an oracle, zero) has nothing to train
            loss.backward()  # reaches M only: it read a detached activation ([Note: SG loss scale])
            step_and_clear(self.optimizer, update)
            self.updates += int(update)
        cos = batch_cosine(prediction.detach(), target).item() if cosine else float("nan")
        return loss.item(), cos

    def training_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "updates": self.updates,
        }

    def load_training_state(self, state: dict) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


class InputInterface(nn.Module):
    """Complete unlock (PAPER.md §1): a synthesizer I that predicts a module's input from the network input x,
    trained by L2 onto the real input when it arrives."""

    def __init__(self, synthesizer: nn.Module, optimizer: OptimizerFactory) -> None:
        super().__init__()
        self.synthesizer = synthesizer
        self.optimizer = optimizer_or_none(synthesizer.parameters(), optimizer)

    def predict(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """I(x, c) (B, *input shape of the module), without graph: the module trains on it as on data."""
        with torch.no_grad():
            return self.synthesizer(x, context)

    def regress(self, x: Tensor, real: Tensor, context: Tensor | None, update: bool = True) -> tuple[Tensor, float]:
        """Regress I(x, c) onto the `real` input and step I if `update`; returns (I(x, c) detached, loss)."""
        prediction = self.synthesizer(x, context)
        loss = synthesizer_loss(prediction, real)
        loss.backward()
        step_and_clear(self.optimizer, update)
        return prediction.detach(), loss.item()

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def load_training_state(self, state: dict) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
