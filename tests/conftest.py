"""Shared fixtures: where the real data lives, and the opt-in markers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthgrad.data import resolve_data_dir

REPO = Path(__file__).resolve().parents[1]

# Unit tests use tiny tensors: one thread avoids oversubscription when other work shares the two cores.
torch.set_num_threads(1)


def shared_data_dir() -> Path | None:
    """The real data, found as every entry point finds it (`resolve_data_dir`: $SYNTHGRAD_DATA_DIR, else
    ../shared/data beside the checkout, else ~/.cache/synthgrad/data), or None."""
    path = resolve_data_dir(None)
    return path if path.is_dir() else None


@pytest.fixture
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None or not (path / "mnist").is_dir():
        pytest.skip("real MNIST not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    return path


@pytest.fixture(autouse=True)
def _restore_threads():
    """`--threads` sets torch's process-wide thread count; give the other tests their setting back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
