"""Synthesizers: small networks that predict a module's gradient (or its input) from local information.

Every synthesizer maps ``(source, context) -> prediction`` where ``source`` is a batch of tensors of
``in_shape`` and the prediction has ``out_shape``. A *gradient* synthesizer has ``in_shape == out_shape``
(it reads a module's output h and predicts ∂ℓ/∂h); an *input* synthesizer reads the network input x and predicts
a module's input (complete unlock, PAPER.md §1). The context, when used, is the one-hot label (cDNI).

The last layer of every synthesizer starts at zero weights *and* zero bias (PAPER.md §1, §8), so the first
prediction is exactly zero: `zero_init_` is the one place that does it.

Flat kinds (linear, low-rank, MLP) read a flattened example; the conv kind reads (C, H, W) feature maps; the
token-wise kinds read (T, D) activations and apply one small map at every position (`TokenSynthesizer`), which
is what a transformer's cut needs: a flat linear map on (T = 256, D = 384) would hold ~10¹⁰ weights.

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

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
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

    @property
    def tokenwise(self) -> bool:
        """Whether this kind applies one map per position of a (T, D) cut."""
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


@dataclass(frozen=True)
class SynthesizerSpec:
    """How to build a synthesizer; shapes and context are supplied where the cut is known.

    The defaults are the paper's DNI synthesizer for FCNs (PAPER.md §2): 2 hidden layers of 1024, batch norm.
    That is a per-example synthesizer; on a token cut (T, D) the default spec builds `token_default(D)` instead
    (a flattened 2×1024 MLP there would hold 2·T·D·1024 weights), and leaves flat and (C, H, W) cuts as they were.
    """

    kind: SynthesizerKind = SynthesizerKind.MLP
    hidden: tuple[int, ...] = (1024, 1024)  # (TOKEN_)LOWRANK: (rank,); ignored for (TOKEN_)LINEAR
    batch_norm: bool = True  # MLP, CONV, TOKEN_MLP
    kernel_size: int = 5  # CONV only
    positions: bool = False  # token kinds: the position is an input too (no longer position-equivariant)

    @staticmethod
    def token_default(width: int) -> SynthesizerSpec:
        """The default on a (T, D = `width`) cut: a token-wise MLP with one hidden layer of D/4 (ReLU, no batch
        norm). Per position it costs D²/2 multiply-adds, plus V·(5D/4) for a one-hot context of V floats (none
        for ids): at D = 128, T = 128, V = 50, 7.1% of a pre-LN block's 12·D² + 2·T·D (3.6% with ids or without
        context); tests/test_tokenwise.py measures it. The paper's DNI synthesizer is an MLP too (PAPER.md §2)."""
        return SynthesizerSpec(SynthesizerKind.TOKEN_MLP, (max(1, width // 4),), batch_norm=False)

    def build(
        self, in_shape: Sequence[int], out_shape: Sequence[int] | None = None, *, context_dim: int = 0
    ) -> Synthesizer:
        kind = SynthesizerKind(self.kind)
        if len(in_shape) == 2 and replace(self, kind=kind) == SynthesizerSpec():
            return self.token_default(in_shape[1]).build(in_shape, out_shape, context_dim=context_dim)
        if kind.tokenwise:
            return TokenSynthesizer(
                in_shape,
                out_shape,
                hidden=() if kind is SynthesizerKind.TOKEN_LINEAR else self.hidden,
                activation=kind is SynthesizerKind.TOKEN_MLP,
                batch_norm=self.batch_norm,
                context_dim=context_dim,
                positions=self.positions,
            )
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
