"""Synthesizers: small networks that predict a module's gradient (or its input) from local information.

Every synthesizer maps ``(source, context) -> prediction`` where ``source`` is a batch of tensors of
``in_shape`` and the prediction has ``out_shape``. A *gradient* synthesizer has ``in_shape == out_shape``
(it reads a module's output h and predicts ∂ℓ/∂h); an *input* synthesizer reads the network input x and predicts
a module's input (complete unlock, PAPER.md §1). The context, when used, is the one-hot label (cDNI).

The last layer of every synthesizer starts at zero weights *and* zero bias (PAPER.md §1, §8), so the first
prediction is exactly zero: `zero_init_` is the one place that does it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class SynthesizerKind(enum.Enum):
    LINEAR = "linear"
    LOWRANK = "lowrank"  # linear through a narrow bottleneck: cheap on wide layers
    MLP = "mlp"
    CONV = "conv"


def zero_init_(layer: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place, so that the synthesizer's first output is exactly 0."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(layer, name, None)
            if p is not None:
                p.zero_()
    return layer


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


class Synthesizer(nn.Module):
    """Base class: subclasses implement `_predict(source, context)` on 2-D or 4-D tensors."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], context_dim: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.context_dim = context_dim

    def forward(self, source: Tensor, context: Tensor | None = None) -> Tensor:
        """Args: source (B, *in_shape); context (B, context_dim) or None. Returns (B, *out_shape)."""
        if self.context_dim and context is None:
            raise ValueError(f"{type(self).__name__} is conditioned on a context of size {self.context_dim}")
        if not self.context_dim:
            context = None
        return self._predict(source, context)

    def _predict(self, source: Tensor, context: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class MLPSynthesizer(Synthesizer):
    """Flatten → [Linear → (BN) → ReLU] × len(hidden) → Linear (zero-initialised) → reshape.

    With ``hidden=()`` this is the linear synthesizer of cDNI (PAPER.md §2: "linear on [h, one-hot y]");
    the DNI synthesizer of the paper is ``hidden=(1024, 1024), batch_norm=True``. The context is concatenated
    to the flattened source.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int] | None = None,
        *,
        hidden: Sequence[int] = (),
        batch_norm: bool = True,
        context_dim: int = 0,
    ) -> None:
        out_shape = in_shape if out_shape is None else out_shape
        super().__init__(in_shape, out_shape, context_dim)
        layers: list[nn.Module] = []
        width = _numel(self.in_shape) + context_dim
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            width = h
        self.hidden = nn.Sequential(*layers)
        self.out = zero_init_(nn.Linear(width, _numel(self.out_shape)))

    def _predict(self, source: Tensor, context: Tensor | None) -> Tensor:
        z = source.flatten(1)  # (B, prod(in_shape))
        if context is not None:
            z = torch.cat([z, context.to(z.dtype)], dim=1)  # (B, prod(in_shape) + C)
        return self.out(self.hidden(z)).view(source.shape[0], *self.out_shape)


def LinearSynthesizer(  # noqa: N802 - a constructor, named like a class on purpose
    in_shape: Sequence[int], out_shape: Sequence[int] | None = None, *, context_dim: int = 0
) -> MLPSynthesizer:
    """A single zero-initialised linear map from [flatten(source), context] to the prediction."""
    return MLPSynthesizer(in_shape, out_shape, hidden=(), context_dim=context_dim)


class LowRankSynthesizer(Synthesizer):
    """Linear map of rank `rank`: [flatten(source), context] → Linear(·, rank) → Linear(rank, out), zero-init.

    On a cut of width D the cost is 2·D·rank instead of D² for the full linear synthesizer, which keeps the
    synthesizer a small fraction of a wide stage's work (the parallel runtime's default). A linear synthesizer
    is what [USG] analyses; the bottleneck only limits its rank.
    """

    def __init__(
        self, in_shape: Sequence[int], out_shape: Sequence[int] | None = None, *, rank: int = 64, context_dim: int = 0
    ) -> None:
        out_shape = in_shape if out_shape is None else out_shape
        super().__init__(in_shape, out_shape, context_dim)
        self.down = nn.Linear(_numel(self.in_shape) + context_dim, rank, bias=False)
        self.out = zero_init_(nn.Linear(rank, _numel(self.out_shape)))

    def _predict(self, source: Tensor, context: Tensor | None) -> Tensor:
        z = source.flatten(1)  # (B, D)
        if context is not None:
            z = torch.cat([z, context.to(z.dtype)], dim=1)  # (B, D + C)
        return self.out(self.down(z)).view(source.shape[0], *self.out_shape)  # (B, *out_shape)


class ConvSynthesizer(Synthesizer):
    """For feature maps (C, H, W): [Conv k×k → (BN) → ReLU] × len(hidden) → Conv k×k to C (zero-initialised).

    PAPER.md §2: two hidden conv layers of 128 5×5 filters then a 5×5 conv. Padding keeps H×W. The context
    (one-hot label) enters as extra constant input channels, broadcast over H×W.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int] | None = None,
        *,
        hidden: Sequence[int] = (128, 128),
        kernel_size: int = 5,
        batch_norm: bool = True,
        context_dim: int = 0,
    ) -> None:
        out_shape = in_shape if out_shape is None else out_shape
        if len(in_shape) != 3 or len(out_shape) != 3 or tuple(in_shape[1:]) != tuple(out_shape[1:]):
            raise ValueError(f"ConvSynthesizer maps (C,H,W) to (C',H,W); got {in_shape} -> {out_shape}")
        super().__init__(in_shape, out_shape, context_dim)
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        ch = in_shape[0] + context_dim
        for h in hidden:
            layers.append(nn.Conv2d(ch, h, kernel_size, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(h))
            layers.append(nn.ReLU())
            ch = h
        self.hidden = nn.Sequential(*layers)
        self.out = zero_init_(nn.Conv2d(ch, out_shape[0], kernel_size, padding=pad))

    def _predict(self, source: Tensor, context: Tensor | None) -> Tensor:
        z = source  # (B, C, H, W)
        if context is not None:
            b, _, hgt, wid = source.shape
            planes = context.to(z.dtype)[:, :, None, None].expand(b, -1, hgt, wid)  # (B, K, H, W)
            z = torch.cat([z, planes], dim=1)
        return self.out(self.hidden(z))


@dataclass(frozen=True)
class SynthesizerSpec:
    """How to build a synthesizer; shapes and context are supplied where the cut is known.

    The defaults are the paper's DNI synthesizer for FCNs (PAPER.md §2): 2 hidden layers of 1024, batch norm.
    """

    kind: SynthesizerKind = SynthesizerKind.MLP
    hidden: tuple[int, ...] = (1024, 1024)  # ignored for LINEAR
    batch_norm: bool = True
    kernel_size: int = 5  # CONV only

    def build(
        self, in_shape: Sequence[int], out_shape: Sequence[int] | None = None, *, context_dim: int = 0
    ) -> Synthesizer:
        kind = SynthesizerKind(self.kind)
        if kind is SynthesizerKind.LINEAR:
            return LinearSynthesizer(in_shape, out_shape, context_dim=context_dim)
        if kind is SynthesizerKind.LOWRANK:
            return LowRankSynthesizer(in_shape, out_shape, rank=self.hidden[0], context_dim=context_dim)
        if kind is SynthesizerKind.MLP:
            return MLPSynthesizer(
                in_shape, out_shape, hidden=self.hidden, batch_norm=self.batch_norm, context_dim=context_dim
            )
        return ConvSynthesizer(
            in_shape,
            out_shape,
            hidden=self.hidden,
            kernel_size=self.kernel_size,
            batch_norm=self.batch_norm,
            context_dim=context_dim,
        )
