"""Token-wise synthesizers for (T, D) activations: one small map applied at every position.

[Note: SG units for tokens]
    A language model's loss is the mean over the B·T tokens of a batch, L = (1/(B·T)) Σ_{b,t} ℓ_{b,t}. The
    chain keeps its per-example units ([Note: SG units] in core.py), an example being one sequence: the ĝ_b
    (T, D) a stage applies stands for g_b = B·∂L/∂h_b, and `to_module_grad` divides by B. Per position,

        g_{b,t} = B·∂L/∂h_{b,t} = (1/T) Σ_{t'} ∂ℓ_{b,t'}/∂h_{b,t},

    which shrinks like 1/T: the same token in a longer window would get a smaller number, and a synthesizer
    trained at one T would be off by the ratio at another. A token-wise synthesizer therefore predicts the
    per-token quantity

        u_{b,t} = T·g_{b,t} = B·T·∂L/∂h_{b,t} = Σ_{t' ≥ t} ∂ℓ_{b,t'}/∂h_{b,t}     (causal: only t' ≥ t)

    the gradient of the token losses that h_{b,t} reaches, at the scale of one token's loss whatever B and T
    (right below a position-wise head it is exactly ∂ℓ_{b,t}/∂h_{b,t}), and reports ĝ_{b,t} = û_{b,t}/T, in the
    chain's units. Nothing else changes: targets arrive in chain units (the bootstrapped Jᵀĝ, or a true
    gradient), and M regresses onto them with `synthesizer_loss`, which in per-token terms is

        L_SG = (1/B) Σ_b ‖ĝ_b − g_b‖² = (1/T) · (1/(B·T)) Σ_{b,t} ‖û_{b,t} − u_{b,t}‖²,

    the per-token mean squared error divided by T. That constant scales every gradient of M alike, which Adam's
    normalisation undoes (up to its ε); read a logged SG loss ×T as the per-token error. tests/test_tokenwise.py
    pins both identities against per-token losses computed independently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthgrad.synthesizers.base import Synthesizer, zero_init_


class TokenLinear(nn.Module):
    """One affine map at every position of (B, T, F): W x_t + C c_t + P_t + b, over [x_t, c_t, one-hot(t)].

    The context and position terms are the columns of that map for the one-hot inputs, applied by lookup where
    the input is an index (no one-hot is built). The weights start as one `nn.Linear` over the concatenation would
    (uniform ±1/√fan_in); `zero_init_` zeroes all of them.

    Args:
        in_features: F.
        out_features: F'.
        context_dim: size V of the context c_t (0: none).
        positions: the largest T whose positions are an input (0: none; then the map is position-equivariant).
        bias: whether b exists.
    """

    def __init__(
        self, in_features: int, out_features: int, *, context_dim: int = 0, positions: int = 0, bias: bool = True
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.context_weight = nn.Parameter(torch.empty(context_dim, out_features)) if context_dim else None
        self.position_weight = nn.Parameter(torch.empty(positions, out_features)) if positions else None
        bound = 1.0 / math.sqrt(in_features + context_dim + positions)
        for p in self.parameters(recurse=False):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Args: x (B, T, F); context (B, T, V) float, (B, T) integer ids or (B, V) float. Returns (B, T, F')."""
        y = F.linear(x, self.weight, self.bias)  # (B, T, F')
        if self.context_weight is not None and context is not None:
            y = y + self._context_term(context, x)
        if self.position_weight is not None:
            t = x.shape[1]
            if t > self.position_weight.shape[0]:
                raise ValueError(f"{t} positions, but position inputs were built for {self.position_weight.shape[0]}")
            y = y + self.position_weight[:t]  # (T, F') broadcast over the batch
        return y

    def _context_term(self, context: Tensor, x: Tensor) -> Tensor:
        b, t, v = x.shape[0], x.shape[1], self.context_weight.shape[0]
        if not context.is_floating_point() and context.shape == (b, t):
            return self.context_weight[context]  # ids: the rows their one-hots would select, (B, T, F')
        if context.shape == (b, t, v):
            return context.to(x.dtype) @ self.context_weight  # (B, T, V) @ (V, F')
        if context.shape == (b, v):
            return (context.to(x.dtype) @ self.context_weight)[:, None, :]  # one context for every position
        raise ValueError(
            f"context of shape {tuple(context.shape)}: expected ({b}, {t}, {v}) floats, ({b}, {t}) ids or ({b}, {v})"
        )

    def multiply_adds(self, *, dense_context: bool = True) -> int:
        """Per position: F·F', plus V·F' when the context comes as (B, T, V) floats (ids are looked up)."""
        n = self.weight.numel()
        if self.context_weight is not None and dense_context:
            n += self.context_weight.numel()
        return n


class _TokenBatchNorm(nn.BatchNorm1d):
    """Batch norm over features, every (example, position) pair a sample: (B, T, F) -> (B, T, F)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(0, 1)).view_as(x)


class TokenSynthesizer(Synthesizer):
    """For (T, D) activations (a transformer's residual stream): one small map m applied at every position,

        ĝ_{b,t} = m(h_{b,t}, c_{b,t}, t) / T             ([Note: SG units for tokens])

    with m one of
        TOKEN_LINEAR    TokenLinear(D → D')
        TOKEN_LOWRANK   Linear(D → r, no bias) → TokenLinear(r → D')
        TOKEN_MLP       TokenLinear(D → h₁) → [(BN) → ReLU → Linear] … → (BN) → ReLU → TokenLinear(h_k → D')

    The last layer is zero-initialised (weights, bias, context and position weights), so ĝ starts at exactly 0.
    The side inputs (the context c_{b,t}, for cDNI the one-hot of position t's target token; and with `positions`
    the position t) enter the last layer: the label term of cDNI's "linear on [h, one-hot y]" (PAPER.md §2) and
    [USG]'s SG(h, y) = d·σ(hA) + yB + C, kept at full rank; an MLP also reads them in its first layer, where they
    can interact with h. Without `positions` the synthesizer is position-equivariant: permuting the positions of
    h and c permutes ĝ. Parameters do not depend on T (but the position table); the cost is O(T·D·r) per
    example, see `multiply_adds`.

    Args:
        in_shape: (T, D).
        out_shape: (T, D'); default `in_shape`.
        hidden: widths of m's hidden layers (TOKEN_LOWRANK: (r,); TOKEN_LINEAR: ()).
        activation: ReLU after each hidden layer (TOKEN_MLP); False makes the hidden layer a linear bottleneck.
        batch_norm: batch norm before each ReLU, over all B·T positions.
        context_dim: V; the context is (B, T, V) floats, (B, T) integer ids (the same map as their one-hots,
            looked up: no (B, T, V) tensor is needed), or (B, V) floats shared by all positions.
        positions: the position t is an input (a learned vector per position, up to T).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int] | None = None,
        *,
        hidden: Sequence[int] = (),
        activation: bool = True,
        batch_norm: bool = False,
        context_dim: int = 0,
        positions: bool = False,
    ) -> None:
        out_shape = in_shape if out_shape is None else out_shape
        if len(in_shape) != 2 or len(out_shape) != 2 or in_shape[0] != out_shape[0]:
            raise ValueError(f"a token-wise synthesizer maps (T, D) to (T, D'); got {in_shape} -> {out_shape}")
        super().__init__(in_shape, out_shape, context_dim)
        (t, d), d_out = self.in_shape, self.out_shape[1]
        side = {"context_dim": context_dim, "positions": t if positions else 0}
        widths = [d, *hidden]
        self.first: nn.Module | None = None
        layers: list[nn.Module] = []
        if hidden:
            norm = activation and batch_norm
            self.first = TokenLinear(d, hidden[0], **(side if activation else {}), bias=activation and not norm)
            for i, width in enumerate(widths[1:], start=1):
                if norm:
                    layers.append(_TokenBatchNorm(width))
                if activation:
                    layers.append(nn.ReLU())
                if i < len(hidden):
                    layers.append(nn.Linear(width, widths[i + 1], bias=not norm))
        self.hidden = nn.Sequential(*layers)
        self.out = zero_init_(TokenLinear(widths[-1], d_out, **side))

    def per_token(self, source: Tensor, context: Tensor | None = None) -> Tensor:
        """û = m(h, c, t) (B, T, D'): the per-token prediction, T·ĝ ([Note: SG units for tokens])."""
        if source.dim() != 3 or source.shape[2] != self.in_shape[1]:
            raise ValueError(f"expected (B, T, {self.in_shape[1]}) activations, got {tuple(source.shape)}")
        z = source  # (B, T, D)
        if self.first is not None:
            z = self.first(z, context)  # (B, T, h₁)
        return self.out(self.hidden(z), context)  # (B, T, D')

    def _predict(self, source: Tensor, context: Tensor | None) -> Tensor:
        return self.per_token(source, context) / source.shape[1]  # chain units: (1/T) of the per-token quantity

    def multiply_adds(self, *, dense_context: bool = True) -> int:
        """Multiply-adds per position of one forward pass (×T for a sequence): the linear maps' weights, plus the
        context's V-wide products when it comes as (B, T, V) floats (ids are looked up). Position terms, biases,
        batch norm and ReLU are additions only."""
        n = 0
        for m in self.modules():
            if isinstance(m, TokenLinear):
                n += m.multiply_adds(dense_context=dense_context)
            elif isinstance(m, nn.Linear):
                n += m.weight.numel()
        return n
