"""A small decoder-only transformer (GPT) for character- and word-level language modelling, cut between blocks.

`gpt(config)` returns an `nn.Sequential` of

    embedding   token ids (B, T) long -> (B, T, D): token embedding, plus learned positions if chosen
    block × L   (B, T, D) -> (B, T, D): x + attn(LN(x)), then x + MLP(LN(x))   (pre-LayerNorm, GPT-2)
    head        (B, T, D) -> (B, T, V) logits: LN, then Linear

so `decouple(model, ids, loss_fn=lm_loss)` puts a cut after the embedding and after every block; every cut is a
(T, D) activation, the shape the token-wise synthesizers read (synthgrad/synthesizers/tokens.py). Attention is causal
`scaled_dot_product_attention`; positions are learned (added to the token embedding) or rotary (applied to
queries and keys in every block, Su et al. 2021, "RoFormer", arXiv 2104.09864). Every layer acts on each example
alone (LayerNorm, no batch norm), so a step does not mix the examples of a batch.

Not done, on purpose: the head's weight is not tied to the token embedding (GPT-2 ties them) because the two
sit in different stages of a decoupled chain, where a shared parameter would re-lock them; no dropout by default,
so that a step is a deterministic function of the batch (the oracle tests compare with backprop to 1e-10).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthgrad.errors import ConfigError


class PositionKind(enum.Enum):
    LEARNED = "learned"  # a learned vector per position, added to the token embedding (GPT-2)
    ROTARY = "rotary"  # queries and keys rotated by position in every block (RoFormer); no position parameters


@dataclass(frozen=True)
class GPTConfig:
    """The model's shape. The defaults are a small character-level model that trains on two CPU cores."""

    vocab_size: int  # V: 50 for PTB characters, 10,000 for PTB words
    layers: int = 4  # L blocks, hence L + 1 cuts with `decouple`'s default (after the embedding and every block)
    width: int = 128  # D, the residual stream
    heads: int = 4  # D / heads = 32 per head, as in GPT-2's 64-wide heads scaled down
    context: int = 128  # T: the longest sequence; learned positions have this many vectors
    positions: PositionKind = PositionKind.LEARNED
    mlp_ratio: int = 4  # the MLP's hidden width is mlp_ratio·D (GPT-2's 4)
    dropout: float = 0.0  # on attention weights and each residual branch; 0 keeps a step deterministic

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "positions", PositionKind(self.positions))
        except ValueError:
            kinds = ", ".join(k.value for k in PositionKind)
            raise ConfigError(f"positions must be one of {kinds}, got {self.positions!r}") from None
        for name in ("vocab_size", "layers", "width", "heads", "context", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"GPT {name} must be an integer >= 1, got {value!r}")
        if self.width % self.heads:
            raise ConfigError(f"GPT width {self.width} is not divisible by heads {self.heads}")
        if self.positions is PositionKind.ROTARY and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head width, got {self.width} / {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPT dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


class Embedding(nn.Module):
    """Token ids (B, T) long -> (B, T, D): the token's vector, plus its position's with learned positions."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.context = config.context
        self.token = nn.Embedding(config.vocab_size, config.width)
        learned = config.positions is PositionKind.LEARNED
        self.position = nn.Embedding(config.context, config.width) if learned else None

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"expected token ids (B, T) of an integer type, got {tuple(ids.shape)} {ids.dtype}")
        t = ids.shape[1]
        if t > self.context:
            raise ConfigError(f"a sequence of {t} tokens is longer than the model's context {self.context}")
        x = self.token(ids)  # (B, T, D)
        if self.position is not None:
            x = x + self.position.weight[:t]  # (T, D) broadcast over the batch
        return x


def rotary_tables(context: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin (context, head_dim / 2) of the angles t·base^(−2i/head_dim) (RoFormer §3.4.2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.arange(context, dtype=torch.float64)[:, None] * inv_freq  # (T, hd/2)
    return angles.cos().float(), angles.sin().float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i + hd/2}) of x (B, H, T, hd) by its position's angle; cos, sin (T, hd/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: (B, T, D) -> (B, T, D), through `scaled_dot_product_attention`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads, self.dropout = config.heads, config.dropout
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.rotary = config.positions is PositionKind.ROTARY
        if self.rotary:  # not parameters, and not saved: a function of the config
            cos, sin = rotary_tables(config.context, config.head_dim)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, H, T, hd)
        if self.rotary:
            if t > self.cos.shape[0]:
                raise ConfigError(f"a sequence of {t} tokens is longer than the model's context {self.cos.shape[0]}")
            q, k = rotate(q, self.cos[:t], self.sin[:t]), rotate(k, self.cos[:t], self.sin[:t])
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2): x + attn(LN(x)), then x + MLP(LN(x)); (B, T, D) -> (B, T, D)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.width
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class Head(nn.Module):
    """(B, T, D) -> (B, T, V) logits: the final LayerNorm of pre-LN transformers, then the unembedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(config.width)
        self.out = nn.Linear(config.width, config.vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.ln(x))


def gpt(config: GPTConfig) -> nn.Sequential:
    """[embedding, block × L, head] as an `nn.Sequential` (see the module doc), initialised as GPT-2: weights
    N(0, 0.02), biases 0, and the projections that write into the residual stream N(0, 0.02/√(2L)) so that
    its variance does not grow with depth."""
    model = nn.Sequential(Embedding(config), *(Block(config) for _ in range(config.layers)), Head(config))
    for name, p in model.named_parameters():
        if name.endswith("bias") or ".ln" in name:
            continue  # biases stay 0 and LayerNorm at (1, 0), as built
        std = 0.02 / math.sqrt(2 * config.layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
        nn.init.normal_(p, std=std)
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """The language-modelling loss: cross-entropy in nats, averaged over all B·T tokens of the batch.

    Args:
        logits: (B, T, V).
        targets: (B, T) token ids, the inputs shifted by one.

    Returns:
        scalar. Bits per token (BPC for characters) is this / ln 2. With `decouple`, the chain's per-example
        units treat a sequence as an example ([Note: SG units for tokens] in synthgrad/synthesizers/tokens.py).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected (B, T, V), (B, T)")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def block_multiply_adds(config: GPTConfig, tokens: int | None = None) -> int:
    """Multiply-adds per position of one block's forward pass on a sequence of `tokens` (default: the context):
    4·D² (qkv, proj) + 2·r·D² (MLP) + 2·T·D (scores and values, counted over all T keys as the fused kernel
    computes them; a causal mask skips about half)."""
    t = config.context if tokens is None else tokens
    d = config.width
    return 4 * d * d + 2 * config.mlp_ratio * d * d + 2 * t * d


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: Tensor,
    steps: int,
    *,
    context: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Extend `prompt` (B, T₀) token ids by `steps` tokens drawn from the model, reading at most the last `context`
    tokens at each step; temperature 0 takes the most likely token. Returns (B, T₀ + steps)."""
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ConfigError(f"the prompt must hold at least one token, got shape {tuple(prompt.shape)}")
    training = model.training
    model.eval()
    try:
        ids = prompt
        for _ in range(steps):
            logits = model(ids[:, -context:])[:, -1]  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits.double() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
    finally:
        model.train(training)
    return ids
