"""What a feed-forward job trains on and how it is scored, whatever the data: images, or token windows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from synthgrad.core import one_hot_context
from synthgrad.data import ImageDataset
from synthgrad.errors import ConfigError
from synthgrad.training.evaluate import CLASSIFIER_METRICS, evaluate


@dataclass(frozen=True, eq=False)
class Task:
    """The training examples (indexed by the loop's batch order), the loss, cDNI's context of a batch, and the
    evaluation of the assembled model (its first metric is the one a target is about; lower is better)."""

    train_x: Tensor  # (N, *input shape)
    train_y: Tensor  # (N, ...) targets
    num_classes: int
    loss_fn: Callable[[Tensor, Tensor], Tensor]  # (output, targets) -> batch-mean loss
    evaluate: Callable[[nn.Module], dict[str, float]]
    metrics: tuple[str, ...]  # the keys `evaluate` returns
    context_of: Callable[[Tensor], Tensor] | None = None  # cDNI: the synthesizers' context of a batch's targets

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def example(self) -> Tensor:
        """Two training inputs: enough to infer every cut's shape (and the input's dtype)."""
        return self.train_x[:2]

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(inputs, targets, context) of the examples at `indices`."""
        indices = indices.to(self.train_y.device)
        y = self.train_y[indices]
        return self.train_x[indices], y, self.context_of(y) if self.context_of is not None else None


def training_examples(data: ImageDataset, train_limit: int | None, batch_size: int, dataset: str) -> int:
    """The training examples a run uses (the first `train_limit`, or all); a `ConfigError` naming the fix when
    they make no batch. Called before the run folder is written, so a refused run leaves nothing behind."""
    examples = min(train_limit or len(data.train_labels), len(data.train_labels))
    if examples < batch_size:
        raise ConfigError(
            f"--batch-size {batch_size} is more than the {examples} training examples of {dataset} found: "
            f"use --batch-size {examples} or less"
        )
    return examples


def classification(data: ImageDataset, examples: int, conditioned: bool) -> Task:
    """Image classification on the first `examples` training images; scored by test error % and test loss."""
    classes = data.num_classes

    def label_context(y: Tensor) -> Tensor:
        return one_hot_context(y, classes)

    return Task(
        data.train_images[:examples], data.train_labels[:examples], classes, F.cross_entropy,
        lambda model: evaluate(model, data.test_images, data.test_labels), CLASSIFIER_METRICS,
        label_context if conditioned else None,
    )  # fmt: skip
