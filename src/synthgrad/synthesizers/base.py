"""What every synthesizer shares: the kinds, the zero initialisation of its last layer, the base class."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SynthesizerKind(enum.Enum):
    LINEAR = "linear"
    LOWRANK = "lowrank"  # linear through a narrow bottleneck: cheap on wide layers
    MLP = "mlp"
    CONV = "conv"
    ZERO = "zero"  # no synthesizer: ĝ = 0 exactly (an ablation; with folding, delayed true gradients only)
    # Token-wise: one small map applied at every position of a (T, D) cut, see `TokenSynthesizer`.
    TOKEN_LINEAR = "token-linear"
    TOKEN_LOWRANK = "token-lowrank"
    TOKEN_MLP = "token-mlp"
    # Across positions: attention from each position to the later ones, see `TokenAttentionSynthesizer`.
    TOKEN_ATTENTION = "token-attention"

    @property
    def tokenwise(self) -> bool:
        """Whether this kind reads a (T, D) cut: one map per position (token-linear, -lowrank, -mlp), or attention
        over the positions (token-attention)."""
        return self.value.startswith("token-")


def zero_init_(layer: nn.Module) -> nn.Module:
    """Zero a layer's own parameters in place, so that the synthesizer's first output is exactly 0.

    For `nn.Linear` and `nn.Conv2d` these are the weight and the bias; a token-wise layer
    (`TokenLinear`) also owns the weights of its context and position inputs, which are part
    of the same affine map and are zeroed with it.
    """
    own = list(layer.parameters(recurse=False))
    assert own, f"{type(layer).__name__} owns no parameters to zero: pass the last layer itself"
    with torch.no_grad():
        for p in own:
            p.zero_()
    return layer


def numel(shape: Sequence[int]) -> int:
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
