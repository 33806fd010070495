"""An oracle synthesizer (the true gradient) makes decoupled training equal backprop (PAPER.md §1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthgrad.decoupled import decouple
from synthgrad.models import cnn, fcn


class Oracle(nn.Module):
    """A parameter-free synthesizer that returns whatever true gradient the test gave it."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        assert self.value is not None and self.value.shape == h.shape
        return self.value


def true_per_example_grads(stages: nn.ModuleList, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Independent reference: backprop through a copy of the whole chain, B·∂L/∂h at every cut."""
    stages = copy.deepcopy(stages)  # leaves the real batch-norm statistics alone
    h, cuts = x, []
    for m in stages[:-1]:
        h = m(h)
        h.retain_grad()
        cuts.append(h)
    F.cross_entropy(stages[-1](h), y).backward()
    return [c.grad * x.shape[0] for c in cuts]


def run_equivalence(model: nn.Module, input_shape: tuple[int, ...], steps: int = 20, *, fold: bool = False) -> float:
    torch.manual_seed(0)
    model = model.double()
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    oracles: list[Oracle] = []

    def make_oracle(shape: tuple[int, ...]) -> Oracle:
        oracles.append(Oracle())
        return oracles[-1]

    x0 = torch.randn(4, *input_shape, dtype=torch.float64)
    net = decouple(copy.deepcopy(model), x0, synthesizer=make_oracle, lr=1e-2, fold_every=int(fold))
    assert len(oracles) == len(list(model.children())) - 1
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, *input_shape, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=gen)
        for oracle, g in zip(oracles, true_per_example_grads(net.blocks, x, y), strict=True):
            oracle.value = g
        net.train_step(x, y)
        ref_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        ref_opt.step()
    ref_state = reference.state_dict()
    dni_state = {}
    for i, stage in enumerate(net.blocks):
        dni_state.update({f"{i}.{k}": v for k, v in stage.state_dict().items()})
    assert ref_state.keys() == dni_state.keys()
    return max((ref_state[k].double() - dni_state[k].double()).abs().max().item() for k in ref_state)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("layers", [2, 4])
def test_oracle_fcn_equals_backprop(layers: int, fold: bool) -> None:
    """With folding the residuals of an oracle are zero, so it is backprop too."""
    diff = run_equivalence(fcn((1, 6, 6), 3, layers=layers, width=16), (1, 6, 6), fold=fold)
    assert diff <= 1e-6


@pytest.mark.parametrize("fold", [False, True])
def test_oracle_cnn_equals_backprop(fold: bool) -> None:
    diff = run_equivalence(cnn((2, 8, 8), 3, layers=3, channels=4, kernel_size=3), (2, 8, 8), fold=fold)
    assert diff <= 1e-6


def test_zero_synthesizer_is_not_backprop() -> None:
    """The test above can fail: a synthesizer that predicts zeros leaves the lower layers untouched."""
    torch.manual_seed(0)
    model = fcn((1, 6, 6), 3, layers=3, width=8).double()
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    net = decouple(copy.deepcopy(model), x, synthesizer=lambda s: _Zero(), lr=1e-2)
    before = copy.deepcopy(net.blocks[0].state_dict())
    net.train_step(x, torch.randint(0, 3, (8,)))
    after = net.blocks[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "batches" not in k)


class _Zero(nn.Module):
    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(h)
