"""Evaluating a classifier: the one evaluator of every feed-forward job."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from synthgrad.training.run_folder import Collective


CLASSIFIER_METRICS = ("test_error", "test_loss")


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> dict[str, float]:
    """{"test_error": %, "test_loss": mean cross-entropy} of `model` in eval mode on real inputs; restores its
    mode."""
    was = model.training
    model.eval()
    wrong, total_loss = 0, 0.0
    for i in range(0, len(labels), batch):
        logits = model(images[i : i + batch])
        wrong += (logits.argmax(1) != labels[i : i + batch]).sum().item()
        total_loss += F.cross_entropy(logits, labels[i : i + batch], reduction="sum").item()
    model.train(was)
    return {"test_error": 100.0 * wrong / len(labels), "test_loss": total_loss / len(labels)}


def evaluate_across(
    comm: Collective, model: nn.Module, part: nn.Module | None, prefix: str, score: Callable[[nn.Module], dict]
) -> dict[str, float]:
    """`score(model)` of a model whose parts are trained on different ranks: rank 0 gathers every rank's `part`
    (keyed in `model` under `prefix`; None: rank 0's model is up to date already), scores it, and every rank
    gets the same result."""
    if part is not None and comm.world_size > 1:
        mine = (prefix, {k: v.detach().cpu() for k, v in part.state_dict().items()})
        states = comm.gather_object(mine)
        if comm.rank == 0:
            merged = {p + k: v for p, state in states for k, v in state.items()}
            unknown = merged.keys() - model.state_dict().keys()
            assert not unknown, f"parts not in the model: {sorted(unknown)[:3]}"
            model.load_state_dict(merged, strict=False)
    result = score(model) if comm.rank == 0 else None
    return comm.broadcast_object(result, src=0)
