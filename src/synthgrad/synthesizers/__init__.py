"""Synthesizers: small networks that predict a module's gradient (or its input) from local information.

Every synthesizer maps ``(source, context) -> prediction`` where ``source`` is a batch of tensors of
``in_shape`` and the prediction has ``out_shape``. A *gradient* synthesizer has ``in_shape == out_shape``
(it reads a module's output h and predicts ∂ℓ/∂h); an *input* synthesizer reads the network input x and predicts
a module's input (complete unlock, PAPER.md §1). The context, when used, is the one-hot label (cDNI).

The last layer of every synthesizer starts at zero weights *and* zero bias (PAPER.md §1, §8), so the first
prediction is exactly zero: `zero_init_` is the one place that does it.

Flat kinds (linear, low-rank, MLP) read a flattened example; the conv kind reads (C, H, W) feature maps; the
token-wise kinds read (T, D) activations and apply one small map at every position (`TokenSynthesizer`), which
is what a transformer's cut needs: a flat linear map on (T = 256, D = 384) would hold ~10¹⁰ weights. The
token-attention kind reads the same cut but lets each position attend to the later ones
(`TokenAttentionSynthesizer`, [Note: anti-causal synthesizer] in tokens.py).
"""

from synthgrad.synthesizers.base import Synthesizer, SynthesizerKind, zero_init_
from synthgrad.synthesizers.flat import ConvSynthesizer, LinearSynthesizer, LowRankSynthesizer, MLPSynthesizer
from synthgrad.synthesizers.spec import SynthesizerSpec
from synthgrad.synthesizers.tokens import TokenAttentionSynthesizer, TokenLinear, TokenSynthesizer

__all__ = [
    "ConvSynthesizer",
    "LinearSynthesizer",
    "LowRankSynthesizer",
    "MLPSynthesizer",
    "Synthesizer",
    "SynthesizerKind",
    "SynthesizerSpec",
    "TokenAttentionSynthesizer",
    "TokenLinear",
    "TokenSynthesizer",
    "zero_init_",
]
