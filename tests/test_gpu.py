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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL stages need one GPU each (2 GPUs)")
def test_parallel_stages_on_nccl(tmp_path) -> None:
    """Two decoupled stages on two GPUs over NCCL, in lockstep: runs and writes its summary."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import write_fake_mnist

    repo = Path(__file__).resolve().parents[1]
    data = write_fake_mnist(tmp_path / "data", n_train=256, n_test=64)
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "synthgrad.cli", "parallel", "--stages", "2", "--method", "cdni", "--device", "cuda",
         "--data-dir", str(data), "--layers", "4", "--width", "16", "--batch-size", "32", "--epochs", "1",
         "--max-staleness", "0", "--out", str(tmp_path / "run"), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stages"] == 2
