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


# [Note: anti-causal synthesizer]
# What a synthesizer at a cut of a causal model must predict is, per token ([Note: SG units for tokens]),
#
#     u_{b,t} = Σ_{t' ≥ t} ∂ℓ_{b,t'}/∂h_{b,t},
#
# the gradient of every loss that h_{b,t} reaches, and in a causal model it reaches those of all later positions:
# u_t depends on the activations h_{t'} and, through ℓ_{t'}, on the target tokens y_{t'} of positions t' > t. A
# token-wise synthesizer maps (h_t, y_t, t) at one position and cannot express that part; the report
# (reports/transformer/report.md) gives it, with cDNI's recipe not folding, as a reason cDNI (which sees y_t but
# none of the later targets) trails backprop on the GPT by more than DNI; DNI's token MLP misses the later h_{t'}
# alike. `TokenAttentionSynthesizer` reads the later positions: its position t attends, with one low-rank head, to
# t' ≥ t (itself included), and for cDNI each value v_{t'} carries the target at t'. So it sees h_{b,t'} and c_{b,t'}
# for t' ≥ t of the same sequence, nothing of other sequences and nothing of positions before t.
#
# It is NOT causal in t: û_t changes when h_{t'} changes at t' > t (tests/test_token_attention.py). It must not be
# used where a forward computation at t may not see later positions (a model's own layers, sampling). A synthetic
# gradient is not such a place: at the cut the whole (B, T, D) activation and, for cDNI, all T targets are there
# at once, and ĝ only updates the stage below the cut. True backprop does the same: its update of the weights below
# the cut at position t uses ∂ℓ_{t'}/∂h_t for t' > t, information from later positions flowing backwards. The
# stage's forward pass, and so what the model computes at t, is unchanged; no target leaks into any prediction.
#
# Masking: `scaled_dot_product_attention` with an explicit (T, T) mask, True where t' ≥ t (the upper triangle,
# diagonal included; with `positions` a float mask of learned biases β_{t'−t}, −∞ below). Flipping the sequence
# and using is_causal=True computes the same, but the explicit mask says what is attended without flips.
#
# Width and cost: r = D/8 by default (the token low-rank default; config.py `_resolve_gpt`). Per position one
# forward pass costs 4·D·r (q, k, z, v) + 2·T·r (scores and weighted values over all T positions, as the masked
# kernel computes them; a position attends to (T + 1)/2 of them on average) + r·D (`out`), with ids as the
# context (one-hot floats add 2·V·r + V·D). Against a pre-LN block's 12·D² + 2·T·D (`block_multiply_adds`, which
# also counts all T keys): at the GPT defaults (D = 64, T = 64, r = 8) 3,584 of 57,344, 6.25 % (with a one-hot float
# context of V = 50: 7,584, 13.2 %; the token-linear synthesizer's is 12.7 % that way, and the CLI passes ids).
# At r = D/8 the share stays ≤ 10 % while T ≤ 11.5·D; r = D/4 would be 12.5 % at the defaults. The softmax
# averages the later positions' values: how many there are (T − t, fewer at the end of a window) is not an input,
# and a sum over them is matched only in scale, through `out`'s weights: on a regression whose target is such a
# sum (tests/test_token_attention.py) it reaches a relative error of about 0.3, where a token-wise map cannot go
# below 0.78.


class TokenAttentionSynthesizer(Synthesizer):
    """For (T, D) activations of a causal model: each position attends to itself and the later positions,

        s_{b,t} = z_{b,t} + Σ_{t' ≥ t} softmax_{t' ≥ t}(q_{b,t}·k_{b,t'}/√r + β_{t'−t}) v_{b,t'}
        û_{b,t} = out(ReLU(s_{b,t}), c_{b,t}),       ĝ_{b,t} = û_{b,t} / T     ([Note: SG units for tokens])

    with q, k = Q h, K h and [z, v] = Z h + C c + b low-rank projections of width r (one head), c the context
    (cDNI: the target token at each position, so v_{t'} carries the target at t' and z_t the one at t), β an
    optional learned bias per distance t' − t, and `out` a `TokenLinear(r → D')` that also reads the context at t
    at full rank (cDNI's label term, as in `TokenSynthesizer`). ReLU between the sum and `out`, as in the token
    MLP: without it û is linear in the z and v of h once the attention weights are fixed. `out` is zero-initialised,
    so ĝ starts at exactly 0. See [Note: anti-causal synthesizer] for why, what it sees and what it costs.

    Args:
        in_shape: (T, D).
        out_shape: (T, D'); default `in_shape`.
        rank: r, the width of q, k, v and z.
        activation: ReLU on s (False: û = out(s)).
        context_dim: V; the context is (B, T, V) floats, (B, T) integer ids (looked up) or (B, V) floats shared by
            every position, as for `TokenSynthesizer`.
        positions: add a learned bias β_{t'−t} per distance to the attention scores (up to T positions).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int] | None = None,
        *,
        rank: int,
        activation: bool = True,
        context_dim: int = 0,
        positions: bool = False,
    ) -> None:
        out_shape = in_shape if out_shape is None else out_shape
        if len(in_shape) != 2 or len(out_shape) != 2 or in_shape[0] != out_shape[0]:
            raise ValueError(f"an attention token synthesizer maps (T, D) to (T, D'); got {in_shape} -> {out_shape}")
        if rank < 1:
            raise ValueError(f"the rank of an attention token synthesizer must be >= 1, got {rank}")
        super().__init__(in_shape, out_shape, context_dim)
        (t, d), d_out = self.in_shape, self.out_shape[1]
        self.rank, self.activation = rank, activation
        self.query_key = nn.Linear(d, 2 * rank, bias=False)  # [q, k]
        self.value = TokenLinear(d, 2 * rank, context_dim=context_dim)  # [z, v]: h_t and the context at t
        self.distance_bias = nn.Parameter(torch.zeros(t)) if positions else None  # β_0 … β_{T−1}
        self.out = zero_init_(TokenLinear(rank, d_out, context_dim=context_dim))

    def per_token(self, source: Tensor, context: Tensor | None = None) -> Tensor:
        """û (B, T, D'): the per-token prediction, T·ĝ ([Note: SG units for tokens])."""
        if source.dim() != 3 or source.shape[2] != self.in_shape[1]:
            raise ValueError(f"expected (B, T, {self.in_shape[1]}) activations, got {tuple(source.shape)}")
        t = source.shape[1]
        q, k = self.query_key(source).chunk(2, dim=-1)  # 2 × (B, T, r)
        z, v = self.value(source, context).chunk(2, dim=-1)  # 2 × (B, T, r)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(t, source))  # (B, T, r), scale 1/√r
        s = z + attended
        return self.out(F.relu(s) if self.activation else s, context)  # (B, T, D')

    def mask(self, t: int, like: Tensor) -> Tensor:
        """What position t (row) may attend to (column t'): t' ≥ t, the upper triangle with its diagonal. A boolean
        (T, T) mask, or with `positions` the float one: β_{t'−t} there, −∞ below. Every row keeps its diagonal, so no
        row is empty."""
        later = torch.ones(t, t, dtype=torch.bool, device=like.device).triu()  # [t, t'] = t' ≥ t
        if self.distance_bias is None:
            return later
        if t > self.distance_bias.shape[0]:
            raise ValueError(f"{t} positions, but distance biases were built for {self.distance_bias.shape[0]}")
        steps = torch.arange(t, device=like.device)
        distance = (steps[None, :] - steps[:, None]).clamp(min=0)  # t' − t where attended
        return self.distance_bias.to(like.dtype)[distance].masked_fill(~later, -math.inf)

    def _predict(self, source: Tensor, context: Tensor | None) -> Tensor:
        return self.per_token(source, context) / source.shape[1]  # chain units: (1/T) of the per-token quantity

    def multiply_adds(self, *, dense_context: bool = True, tokens: int | None = None) -> int:
        """Multiply-adds per position of one forward pass on `tokens` positions (default T; ×T for a sequence):
        the projections 4·D·r (q, k, z, v), the attention 2·T·r (q·k and the weighted sum of v, counted over all T
        positions as the kernel computes them with the mask, like `block_multiply_adds`; the mask leaves
        (T + 1)/2 of them per position on average), and `out`'s r·D'; plus 2·V·r + V·D' when the context comes as
        (B, T, V) floats (ids are looked up). Biases, the distance bias, ReLU and the softmax are not counted."""
        t = self.in_shape[0] if tokens is None else tokens
        projections = self.query_key.weight.numel() + self.value.multiply_adds(dense_context=dense_context)
        return projections + 2 * t * self.rank + self.out.multiply_adds(dense_context=dense_context)
