"""`SynthesizerSpec`: how to build a synthesizer, once the shape of its cut is known."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from synthgrad.synthesizers.base import Synthesizer, SynthesizerKind
from synthgrad.synthesizers.flat import ConvSynthesizer, LinearSynthesizer, LowRankSynthesizer, MLPSynthesizer
from synthgrad.synthesizers.tokens import TokenAttentionSynthesizer, TokenSynthesizer


@dataclass(frozen=True)
class SynthesizerSpec:
    """How to build a synthesizer; shapes and context are supplied where the cut is known.

    The defaults are the paper's DNI synthesizer for FCNs (PAPER.md §2): 2 hidden layers of 1024, batch norm.
    That is a per-example synthesizer; on a token cut (T, D) the default spec builds `token_default(D)` instead
    (a flattened 2×1024 MLP there would hold 2·T·D·1024 weights), and leaves flat and (C, H, W) cuts as they were.
    """

    kind: SynthesizerKind = SynthesizerKind.MLP
    hidden: tuple[int, ...] = (1024, 1024)  # (TOKEN_)LOWRANK, TOKEN_ATTENTION: (rank,); ignored for (TOKEN_)LINEAR
    batch_norm: bool = True  # MLP, CONV, TOKEN_MLP
    kernel_size: int = 5  # CONV only
    # token kinds: the position is an input too (no longer position-equivariant); TOKEN_ATTENTION: a learned bias
    # per distance t' − t on the attention scores
    positions: bool = False

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
        if kind is SynthesizerKind.TOKEN_ATTENTION:  # hidden = (r,); the field's default (1024, 1024): r = D/8
            if len(in_shape) != 2:
                raise ValueError(f"token-attention reads (T, D) token activations; got a cut of shape {in_shape}")
            hidden = (max(1, in_shape[1] // 8),) if self.hidden == SynthesizerSpec.hidden else self.hidden
            if len(hidden) != 1:
                raise ValueError(f"token-attention takes one width, its rank r: got hidden {self.hidden}")
            return TokenAttentionSynthesizer(
                in_shape, out_shape, rank=hidden[0], context_dim=context_dim, positions=self.positions
            )
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
