"""Synthesizers of one example as a whole: linear, low-rank and MLP maps of the flattened example (with the
label concatenated for cDNI), and conv maps of (C, H, W) feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthgrad.core import accumulate_grads
from synthgrad.synthesizers.base import Synthesizer, numel, zero_init_


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
        width = numel(self.in_shape) + context_dim
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            width = h
        self.hidden = nn.Sequential(*layers)
        self.out = zero_init_(nn.Linear(width, numel(self.out_shape)))

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
    """A linear map whose activation path has rank `rank`, with the context beside the bottleneck:

        ĝ = U·(V·flatten(h)) + W·c + b         V: (rank, D), U: (out, rank), W: (out, C); U, W, b zero-initialised

    On a cut of width D the cost is 2·D·rank instead of D² for the full linear synthesizer, which keeps the
    synthesizer a small fraction of a wide stage's work (the parallel runtime's default). A linear synthesizer
    is what [USG] analyses; the bottleneck only limits its rank on h. The context (cDNI's one-hot label) enters at
    full rank, as [USG]'s SG(h, y) = hA + yB + C and the token-wise synthesizers have it ([Note: label path]).
    """

    def __init__(
        self, in_shape: Sequence[int], out_shape: Sequence[int] | None = None, *, rank: int = 64, context_dim: int = 0
    ) -> None:
        out_shape = in_shape if out_shape is None else out_shape
        super().__init__(in_shape, out_shape, context_dim)
        self.down = nn.Linear(numel(self.in_shape), rank, bias=False)
        self.out = zero_init_(nn.Linear(rank, numel(self.out_shape)))
        self.label = zero_init_(nn.Linear(context_dim, numel(self.out_shape), bias=False)) if context_dim else None

    def _predict(self, source: Tensor, context: Tensor | None) -> Tensor:
        z = self.down(source.flatten(1))  # V·h (B, rank)
        if not z.requires_grad:  # kept for `accumulate_fit` of the same source and V
            self._bottleneck = (source, self.down.weight._version, z)
        y = self.out(z)  # (B, out)
        if context is not None:
            y = y + self.label(context.to(y.dtype))  # (B, C) -> (B, out): one learned vector per label
        return y.view(source.shape[0], *self.out_shape)  # (B, *out_shape)

    def accumulate_fit(self, source: Tensor, context: Tensor | None, prediction: Tensor, target: Tensor) -> Tensor:
        """The gradient of `synthesizer_loss(self(source, context), target)` added to every parameter's `.grad`,
        written out ([Note: closed-form fit]); `prediction` is that output (no graph needed). Returns the loss."""
        context = context if self.context_dim else None  # as `forward` reads it
        b = source.shape[0]
        h = source.flatten(1)  # (B, in)
        diff = prediction.reshape(b, -1) - target.reshape(b, -1)  # (B, out), a new tensor
        loss = torch.dot(diff.view(-1), diff.view(-1)) / b  # (1/B) Σ_b ‖ĝ_b − g_b‖²
        grad = diff.mul_(2.0 / b)  # ∂loss/∂ĝ (B, out)
        z = self._bottleneck_of(source)  # V·h (B, rank), as the forward pass computed it
        params = [self.out.weight, self.down.weight, self.out.bias]  # U: (out, rank), V: (rank, in), b: (out,)
        grads = [grad.t() @ z, (grad @ self.out.weight).t() @ h, grad.sum(0)]  # V's through U
        if context is not None:
            params.append(self.label.weight)  # W: (out, C)
            grads.append(grad.t() @ context.to(grad.dtype))
        accumulate_grads(params, grads)
        return loss

    def _bottleneck_of(self, source: Tensor) -> Tensor:
        """V·h of `source`: the one the last prediction without graph computed, if it read this very tensor with
        the same V (its version counter has not moved), else computed anew."""
        kept = getattr(self, "_bottleneck", None)
        if kept is not None and kept[0] is source and kept[1] == self.down.weight._version:
            return kept[2]
        return source.flatten(1) @ self.down.weight.t()


# [Note: closed-form fit]
#     A low-rank synthesizer's regression step is a handful of small matrix products; through autograd it is some
#     thirty operations (the loss's subtraction, power, sum and mean and their backward, the three linear layers'
#     transposes, views and accumulations) and one more engine call per cut and step. `accumulate_fit` writes the
#     gradient out: with ĝ = U·V·h + W·c + b and L = (1/B) Σ_b ‖ĝ_b − g_b‖², G = ∂L/∂ĝ = (2/B)(ĝ − g) and
#         ∂L/∂U = Gᵀ(V·h),  ∂L/∂V = (G·U)ᵀ h,  ∂L/∂W = Gᵀ c,  ∂L/∂b = Σ_b G_b,
#     which is what autograd computes (tests/test_core.py, and tests/test_decoupled.py for a whole chain). V·h is
#     the one the prediction computed when the fit reads the same tensor with V unchanged (`_bottleneck_of`).
#     `Interface.fit` takes this path whenever the synthesizer offers it and every parameter trains; the prediction
#     then needs no graph. Measured (BENCHMARKS.md, "The closed-form fit"): on the 4-layer MNIST FCN cDNI's step
#     is 7-9 % shorter, DNI's (which fits on folded batches only) 1-6 %.


# [Note: label path]
#     Most of a hidden layer's gradient under a softmax loss is about the label: ∂ℓ/∂h = Jᵀ(p − y), and early in
#     training, when p is near uniform, the −Jᵀy part dominates. Through a rank-r bottleneck shared with h, a
#     10-class label table of rank up to 10 is squeezed to rank r and competes with h for it; beside the
#     bottleneck it is one zero-initialised vector per label that Adam moves at full rate from the first step.
#     Measured (BENCHMARKS.md, "cDNI's label path"): cDNI on the 4-layer FCN after one epoch 11.04 % -> 7.25 %
#     test error (backprop 5.59 %), and the K = 2 pipeline reaches 98 % in 440 / 520 / 520 steps (seeds 0-2)
#     instead of 702 (seed 0).


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
