"""CUDA checks: skipped cleanly on machines without a GPU (CI has none)."""

from __future__ import annotations

import copy

import pytest
import torch

from synthgrad.core import one_hot_context
from synthgrad.decoupled import decouple
from synthgrad.models import fcn

pytestmark = pytest.mark.gpu


def test_cdni_step_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = fcn((1, 8, 8), 4, layers=3, width=16).double()
    x = torch.randn(32, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    nets = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(1)
        net = decouple(copy.deepcopy(model), x[:2], context_dim=4).double().to(device)
        for _ in range(3):
            net.train_step(x.to(device), y.to(device), one_hot_context(y, 4, torch.float64).to(device))
        nets[device] = net
    for p, q in zip(nets["cpu"].parameters(), nets["cuda"].parameters(), strict=True):
        assert torch.allclose(p, q.cpu(), atol=1e-8)
