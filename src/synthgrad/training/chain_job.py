"""A decoupled chain trained in this process: the job of `synthgrad train` (backprop is a chain of one module)."""

from __future__ import annotations

from typing import Any

import torch

from synthgrad.decoupled import DecoupledSequential
from synthgrad.stage import nan_mean
from synthgrad.training.run_folder import Solo
from synthgrad.training.task import Task


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
    """`net` trained on `task` in this process, one `train_step` per batch.

    Args:
        net: the chain.
        task: what it trains on (tensors on the device the net is on) and how it is scored.
        diagnose_every: steps between true-gradient cosine measurements (0: never).
    """

    comm = Solo()

    def __init__(self, net: DecoupledSequential, task: Task, *, diagnose_every: int = 0) -> None:
        self.net, self.task, self.diagnose_every = net, task, diagnose_every
        self._sg: list[list[float]] = []
        self._diagnostics: list[dict] = []  # since the last metric row

    def step(self, indices: torch.Tensor) -> float:
        net = self.net
        x, y, context = self.task.batch(indices)
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
        return self.task.metrics

    def evaluate(self) -> dict[str, float]:
        return self.task.evaluate(self.net)

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
