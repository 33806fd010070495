"""The model zoo, each model an `nn.Sequential` of *layers* (blocks).

Every child of the returned `nn.Sequential` is one "layer" in the paper's sense, so `decouple(model)` puts a
decoupled interface after every layer. The paper's feed-forward models (PAPER.md §2) are here: "N layers" means
N−1 hidden layers plus the output layer (PAPER.md §2: sources disagree; this is the reading we state in every
report). The small GPT for language modelling is in `gpt.py`: [embedding, block × L, head].
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from synthgrad.models.gpt import GPTConfig, PositionKind, block_multiply_adds, gpt, lm_loss, sample

__all__ = [
    "MODELS",
    "GPTConfig",
    "PositionKind",
    "block_multiply_adds",
    "build_model",
    "cnn",
    "fcn",
    "gpt",
    "lm_loss",
    "sample",
]


def fcn(input_shape: Sequence[int], num_classes: int, *, layers: int, width: int = 256) -> nn.Sequential:
    """Fully connected net: (layers−1) × [Linear → BatchNorm1d → ReLU] of `width` units, then Linear.

    MNIST FCN (PAPER.md §2): width 256. CIFAR-10 FCN: width 1000.
    Input (B, *input_shape) is flattened by the first layer; output (B, num_classes) logits.
    """
    if layers < 1:
        raise ValueError(f"an FCN needs at least 1 layer, got {layers}")
    in_features = 1
    for d in input_shape:
        in_features *= d
    blocks: list[nn.Module] = []
    for i in range(layers - 1):
        linear = nn.Linear(in_features if i == 0 else width, width, bias=False)  # BN supplies the bias
        block = [nn.Flatten()] if i == 0 else []
        blocks.append(nn.Sequential(*block, linear, nn.BatchNorm1d(width), nn.ReLU()))
    head = nn.Linear(in_features if layers == 1 else width, num_classes)
    blocks.append(nn.Sequential(nn.Flatten(), head) if layers == 1 else head)
    return nn.Sequential(*blocks)


def cnn(
    input_shape: Sequence[int], num_classes: int, *, layers: int, channels: int = 128, kernel_size: int = 5
) -> nn.Sequential:
    """Convolutional net: (layers−1) conv layers then a linear output layer (PAPER.md §2).

    Each conv layer: Conv k×k (same padding) → BatchNorm2d → ReLU → pool; 3×3 max-pool (stride 2) after the
    first layer, 3×3 average-pool (stride 2) after the others. CIFAR-10: 128 filters; MNIST: 64.
    Input (B, C, H, W); output (B, num_classes).
    """
    if layers < 2:
        raise ValueError(f"a CNN needs at least 2 layers (a conv layer and the output layer), got {layers}")
    c, h, w = input_shape
    blocks: list[nn.Module] = []
    for i in range(layers - 1):
        pool = nn.MaxPool2d(3, stride=2, padding=1) if i == 0 else nn.AvgPool2d(3, stride=2, padding=1)
        conv = nn.Conv2d(c if i == 0 else channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        blocks.append(nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(), pool))
        h, w = (h + 1) // 2, (w + 1) // 2
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, num_classes)))
    return nn.Sequential(*blocks)


MODELS = ("fcn", "cnn")


def build_model(name: str, input_shape: Sequence[int], num_classes: int, *, layers: int, width: int) -> nn.Sequential:
    """One of `MODELS`: `fcn` with `width` units per layer, or `cnn` with `width` filters."""
    if name == "cnn":
        return cnn(input_shape, num_classes, layers=layers, channels=width)
    return fcn(input_shape, num_classes, layers=layers, width=width)
