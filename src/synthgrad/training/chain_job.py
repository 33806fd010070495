"""A decoupled chain trained in this process: the job of `synthgrad train` (backprop is a chain of one module)."""

from __future__ import annotations

from typing import Any

import torch

from synthgrad.core import one_hot_context
from synthgrad.data import ImageDataset
from synthgrad.decoupled import DecoupledSequential
from synthgrad.stage import nan_mean
from synthgrad.training.evaluate import CLASSIFIER_METRICS, evaluate
from synthgrad.training.run_folder import Solo


def first_nonfinite(named: Any) -> str | None:
    """The name of the first tensor of (name, tensor) pairs, or of nested optimizer states, that is not finite."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def state_tensors(module: torch.nn.Module, optimizers: list[torch.optim.Optimizer | None]) -> list[tuple[str, Any]]:
    """(name, tensor) of every parameter, buffer and optimizer state of `module` and `optimizers`."""
    pairs: list[tuple[str, Any]] = list(module.state_dict().items())
    for i, opt in enumerate(o for o in optimizers if o is not None):
        for p_state in opt.state.values():
            pairs += [(f"optimizer {i} {k}", v) for k, v in p_state.items()]
    return pairs


class ChainJob:
    """`net` trained on `data` in this process, one `train_step` per batch.

    Args:
        net: the chain.
        data: the dataset (train and test tensors on the device the net is on).
        examples: use the first `examples` training examples.
        conditioned: cDNI: the synthesizers read the one-hot label.
        diagnose_every: steps between true-gradient cosine measurements (0: never).
    """

    comm = Solo()

    def __init__(
        self, net: DecoupledSequential, data: ImageDataset, *, examples: int, conditioned: bool, diagnose_every: int
    ) -> None:
        self.net, self.data = net, data
        self.train_x, self.train_y = data.train_images[:examples], data.train_labels[:examples]
        self.conditioned, self.diagnose_every = conditioned, diagnose_every
        self._sg: list[list[float]] = []
        self._diagnostics: list[dict] = []  # since the last metric row

    def step(self, indices: torch.Tensor) -> float:
        net = self.net
        indices = indices.to(self.train_y.device)
        x, y = self.train_x[indices], self.train_y[indices]
        context = one_hot_context(y, self.data.num_classes, x.dtype) if self.conditioned else None
        diagnose = self.diagnose_every > 0 and net.steps % self.diagnose_every == 0
        stats = net.train_step(x, y, context, diagnose=diagnose)
        if stats.sg_loss:
            self._sg.append(stats.sg_loss)
        if stats.true_cosine is not None:
            row = {"step": net.steps, "true_cosine": stats.true_cosine, "target_cosine": stats.target_cosine,
                   "sg_loss": stats.sg_loss}  # fmt: skip
            self._diagnostics.append(row)
        return stats.loss

    def evaluate_keys(self) -> tuple[str, ...]:
        return CLASSIFIER_METRICS

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.net, self.data.test_images, self.data.test_labels)

    def interval_metrics(self) -> dict[str, Any]:
        """Per cut, means since the last row: synthesizer loss (NaN steps skipped: with folding a synthesizer
        trains only when a true gradient comes down), and the diagnosed cosines."""
        metrics = {
            "sg_loss": _per_cut(self._sg),
            "target_cosine": _per_cut([r["target_cosine"] for r in self._diagnostics]),
            "true_cosine": _per_cut([r["true_cosine"] for r in self._diagnostics]),
        }
        self._sg = []
        return metrics

    def take_diagnostics(self) -> list[dict]:
        rows, self._diagnostics = self._diagnostics, []
        return rows

    def training_state(self) -> dict:
        return self.net.training_state()

    def load_training_state(self, state: dict) -> None:
        self.net.load_training_state(state)

    def settle(self) -> None:
        pass

    def check_finite(self) -> str | None:
        stages = self.net.stages
        optimizers = [o for s in stages for o in (s.optimizer, s.interface and s.interface.optimizer)]
        return first_nonfinite(state_tensors(self.net, optimizers))

    def report(self) -> dict[str, Any]:
        return {"stage": 0, "threads": torch.get_num_threads()}


def _per_cut(rows: list[list[float]]) -> list[float]:
    """The mean of each column of `rows`, NaN skipped ([] for no rows)."""
    if not rows:
        return []
    return [nan_mean([r[j] for r in rows]) for j in range(len(rows[0]))]
