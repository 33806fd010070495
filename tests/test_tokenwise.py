"""Token-wise synthesizers for (T, D) cuts, and the gradient units for token losses ([Note: SG units for tokens])."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from synthgrad.core import synthesizer_loss
from synthgrad.decoupled import decouple
from synthgrad.models import GPTConfig, block_multiply_adds, gpt, lm_loss
from synthgrad.synthesizers import (
    ConvSynthesizer,
    MLPSynthesizer,
    SynthesizerKind,
    SynthesizerSpec,
    TokenLinear,
    TokenSynthesizer,
)

T, D, V = 6, 8, 5
TOKEN_SPECS = {
    "token-linear": SynthesizerSpec(SynthesizerKind.TOKEN_LINEAR),
    "token-lowrank": SynthesizerSpec(SynthesizerKind.TOKEN_LOWRANK, (3,)),
    "token-mlp": SynthesizerSpec(SynthesizerKind.TOKEN_MLP, (7, 4), batch_norm=False),
    "token-mlp-bn": SynthesizerSpec(SynthesizerKind.TOKEN_MLP, (7,)),
    "default": SynthesizerSpec(),
}


def randomise_(module: nn.Module) -> nn.Module:
    """Every parameter random (the zero-initialised last layer too), so that a test of the map is not one of 0."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def contexts(b: int, t: int, v: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same cDNI context as (B, T) ids and as their one-hots (B, T, V)."""
    ids = torch.randint(0, v, (b, t), generator=gen)
    return ids, F.one_hot(ids, v).float()


# ---------------------------------------------------------------------------------------------- the synthesizers
@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("context_dim", [0, V])
@pytest.mark.parametrize("name", list(TOKEN_SPECS))
def test_token_synthesizer_starts_at_exactly_zero(name: str, context_dim: int, positions: bool) -> None:
    torch.manual_seed(0)
    spec = TOKEN_SPECS[name]
    if positions:
        spec = SynthesizerSpec(SynthesizerKind.TOKEN_MLP, (7,), positions=True)
    synth = spec.build((T, D), context_dim=context_dim)
    assert isinstance(synth, TokenSynthesizer)
    assert all(torch.count_nonzero(p) == 0 for p in synth.out.parameters())  # weight, bias, context, positions
    h = torch.randn(3, T, D) * 100
    ctx = contexts(3, T, V, torch.Generator().manual_seed(0))[1] if context_dim else None
    out = synth(h, ctx)
    assert out.shape == (3, T, D) and torch.count_nonzero(out) == 0
    synthesizer_loss(out, torch.ones_like(out)).backward()  # ...and it is not stuck there
    assert synth.out.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(TOKEN_SPECS))
def test_token_synthesizers_are_position_equivariant(name: str) -> None:
    """Permuting the positions of h and of the context permutes ĝ; changing one position changes only its ĝ."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    synth = randomise_(TOKEN_SPECS[name].build((T, D), context_dim=V)).double()
    h = torch.randn(4, T, D, generator=gen, dtype=torch.float64)
    ids, one_hot = contexts(4, T, V, gen)
    perm = torch.randperm(T, generator=gen)
    out = synth(h, one_hot)
    assert torch.allclose(synth(h[:, perm], one_hot[:, perm]), out[:, perm], atol=1e-12, rtol=0)
    assert torch.allclose(synth(h[:, perm], ids[:, perm]), out[:, perm], atol=1e-12, rtol=0)
    h2 = h.clone()
    h2[:, 2] += 1.0
    moved = (synth(h2, one_hot) - out).abs().amax(dim=(0, 2))  # (T,)
    others = moved[torch.arange(T) != 2].max()
    if "bn" in name:  # batch norm pools its statistics over all positions: equivariant, but not local
        assert moved[2] > others
    else:
        assert moved[2] > 1e-3 and others < 1e-12


def test_position_input_breaks_equivariance() -> None:
    """The test above can fail: with the position as an input, the same h at another position gets another ĝ."""
    torch.manual_seed(0)
    synth = randomise_(SynthesizerSpec(SynthesizerKind.TOKEN_LINEAR, positions=True).build((T, D))).double()
    h = torch.randn(2, T, D, dtype=torch.float64)
    perm = torch.arange(T).flip(0)
    assert not torch.allclose(synth(h[:, perm]), synth(h)[:, perm])
    assert synth(h[:, :3]).shape == (2, 3, D)  # a shorter window uses the first positions
    with pytest.raises(ValueError, match="positions"):
        synth(torch.randn(2, T + 1, D, dtype=torch.float64))


def test_context_as_ids_one_hots_or_per_sequence_is_the_same_map() -> None:
    torch.manual_seed(0)
    synth = randomise_(TOKEN_SPECS["token-mlp"].build((T, D), context_dim=V)).double()
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(3, T, D, generator=gen, dtype=torch.float64)
    ids, one_hot = contexts(3, T, V, gen)
    assert torch.allclose(synth(h, ids), synth(h, one_hot), atol=1e-12, rtol=0)
    per_sequence = one_hot[:, 0]  # (B, V): one context for every position
    assert torch.allclose(synth(h, per_sequence), synth(h, per_sequence[:, None].expand(3, T, V)), atol=1e-12)
    assert not torch.allclose(synth(h, ids), synth(h, (ids + 1) % V))  # the context is read
    with pytest.raises(ValueError, match="context"):
        synth(h, one_hot[:, :, :2])
    with pytest.raises(ValueError, match="context"):
        synth(h)


def test_token_linear_is_the_linear_map_on_the_concatenated_one_hots() -> None:
    """TokenLinear = nn.Linear over [x_t, one-hot(c_t), one-hot(t)], with the same initial scale."""
    torch.manual_seed(0)
    layer = TokenLinear(D, 3, context_dim=V, positions=T).double()
    x = torch.randn(2, T, D, dtype=torch.float64)
    ids = torch.randint(0, V, (2, T))
    z = torch.cat([x, F.one_hot(ids, V).double(), torch.eye(T, dtype=torch.float64).expand(2, T, T)], dim=-1)
    weight = torch.cat([layer.weight, layer.context_weight.T, layer.position_weight.T], dim=1)
    assert torch.allclose(layer(x, ids), F.linear(z, weight, layer.bias), atol=1e-12)
    assert layer.weight.abs().max() <= (D + V + T) ** -0.5


def test_spec_default_is_token_wise_only_on_token_cuts() -> None:
    """`SynthesizerSpec()` builds the token default on (T, D) and what it built before on flat and (C, H, W) cuts;
    an explicit flat kind stays flat on a token cut."""
    token = SynthesizerSpec().build((T, D), context_dim=V)
    assert isinstance(token, TokenSynthesizer) and token.first.weight.shape == (D // 4, D)
    assert SynthesizerSpec(SynthesizerKind.MLP).build((T, D)).__class__ is TokenSynthesizer  # same as the default
    flat = SynthesizerSpec().build((D,))
    assert isinstance(flat, MLPSynthesizer) and len(flat.hidden) == 6 and flat.out.in_features == 1024
    assert isinstance(SynthesizerSpec().build((2, 3, 3)), MLPSynthesizer)
    assert isinstance(SynthesizerSpec(SynthesizerKind.MLP, (8,)).build((T, D)), MLPSynthesizer)
    assert isinstance(SynthesizerSpec(SynthesizerKind.CONV, (2,)).build((3, 4, 4)), ConvSynthesizer)
    assert SynthesizerKind("token-lowrank").tokenwise and not SynthesizerKind.LOWRANK.tokenwise
    with pytest.raises(ValueError, match="token-wise"):
        SynthesizerSpec(SynthesizerKind.TOKEN_LINEAR).build((D,))


def test_parameters_do_not_grow_with_the_window() -> None:
    """O(D·r) weights shared by every position, against (T·D)² for a flat linear synthesizer."""
    small = SynthesizerSpec().build((16, 32), context_dim=V)
    large = SynthesizerSpec().build((512, 32), context_dim=V)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) == count(large) < 32 * 32 * 2
    flat = SynthesizerSpec(SynthesizerKind.LINEAR).build((16, 32))
    assert count(flat) > (16 * 32) ** 2


def test_decouple_gives_a_gpt_token_wise_synthesizers_by_default() -> None:
    torch.manual_seed(0)
    model = gpt(GPTConfig(V, layers=2, width=D, heads=2, context=T))
    net = decouple(model, torch.randint(0, V, (2, T)), loss_fn=lm_loss, context_dim=V)
    assert len(net.synthesizers) == 3  # after the embedding and after each block
    assert all(isinstance(s, TokenSynthesizer) and s.context_dim == V for s in net.synthesizers)


# ---------------------------------------------------------------------------------------------- units for tokens
def cut_gpt(seed: int = 0, **kwargs: object) -> nn.Sequential:
    torch.manual_seed(seed)
    config = {"layers": 2, "width": D, "heads": 2, "context": 12, **kwargs}
    return gpt(GPTConfig(V, **config)).double()  # type: ignore[arg-type]


def per_token_gradients(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, cut: int) -> torch.Tensor:
    """u_{b,t} = Σ_{t'} ∂ℓ_{b,t'}/∂h_{b,t} at the output of child `cut`, from the *sum* of per-token losses: no
    batch mean, no token mean, nothing of the chain's conventions (an independent reference)."""
    model = copy.deepcopy(model)
    h = model[: cut + 1](x)
    h.retain_grad()
    logits = model[cut + 1 :](h)
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").backward()
    return h.grad


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_chain_units_are_per_token_quantities_over_t(cut: int) -> None:
    """[Note: SG units for tokens]: the chain's true gradient at a cut (B·∂L/∂h_b, what a stage applies ×1/B)
    equals u/T, u the per-token quantity a token-wise synthesizer predicts."""
    model = cut_gpt()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, V, (3, 12), generator=gen), torch.randint(0, V, (3, 12), generator=gen)
    net = decouple(copy.deepcopy(model), x, loss_fn=lm_loss)
    chain = net.true_gradients(x, y)[cut]  # (B, T, D), the chain's per-example units
    u = per_token_gradients(model, x, y, cut)
    assert torch.allclose(chain * 12, u, atol=1e-13, rtol=1e-10)
    # A token-wise synthesizer that predicts u reports the chain's units.
    synth = net.synthesizers[cut]
    synth.per_token = lambda source, context=None: u  # type: ignore[method-assign]
    assert torch.allclose(synth(x.double()[..., None].expand(3, 12, D), None), chain, atol=1e-15)


def test_per_token_quantities_do_not_scale_with_the_batch_or_the_window() -> None:
    """Below the position-wise head, u_{b,t} = ∂ℓ_{b,t}/∂h_{b,t}: the same in a window of 6 and its first 6
    positions in a window of 12, and for a batch and the same batch twice; the chain's units differ by 12/6."""
    model = cut_gpt()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, V, (3, 12), generator=gen), torch.randint(0, V, (3, 12), generator=gen)
    top = 2  # the output of the last block
    long, short = per_token_gradients(model, x, y, top), per_token_gradients(model, x[:, :6], y[:, :6], top)
    assert torch.allclose(long[:, :6], short, atol=1e-13)
    twice = per_token_gradients(model, x.repeat(2, 1), y.repeat(2, 1), top)
    assert torch.allclose(twice[:3], long, atol=1e-13)
    net_long, net_short = (decouple(copy.deepcopy(model), x[:, :t], loss_fn=lm_loss) for t in (12, 6))
    chain_long = net_long.true_gradients(x, y)[top]
    chain_short = net_short.true_gradients(x[:, :6], y[:, :6])[top]
    assert torch.allclose(chain_long[:, :6] * 12 / 6, chain_short, atol=1e-13)


def test_synthesizer_loss_in_chain_units_is_the_per_token_error_over_t() -> None:
    """L_SG = (1/B) Σ_b ‖ĝ_b − g_b‖² = (1/T)·(1/(B·T)) Σ_{b,t} ‖û − u‖², written out with loops."""
    torch.manual_seed(0)
    u_hat, u = torch.randn(3, T, D, dtype=torch.float64), torch.randn(3, T, D, dtype=torch.float64)
    per_token = sum(((u_hat[b, t] - u[b, t]) ** 2).sum() for b in range(3) for t in range(T)) / (3 * T)
    assert synthesizer_loss(u_hat / T, u / T).item() == pytest.approx(per_token.item() / T, rel=1e-12)


# ---------------------------------------------------------------------------------------------- cost
def test_token_synthesizer_costs_at_most_a_tenth_of_a_block() -> None:
    """The issue's figure at the default size (4 layers, width 128, 4 heads, context 128, vocab 50): the default
    token synthesizer's multiply-adds per position, measured by torch's flop counter, against a block's (its
    linear layers measured the same way, plus the attention's 2·T·D, which the counter does not see in the CPU
    kernel). The cDNI context counts its V-wide product only when it comes as one-hot floats."""
    config = GPTConfig(50)
    block = gpt(config)[1]
    h = torch.randn(2, config.context, config.width)
    ids = torch.randint(0, 50, (2, config.context))

    def measured(fn) -> float:  # multiply-adds per position
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 2 / h.shape[0] / h.shape[1]

    linear = measured(lambda: block(h))
    attention = 2 * config.context * config.width
    assert linear + attention == block_multiply_adds(config)
    for context_dim, ctx in ((0, None), (50, ids), (50, F.one_hot(ids, 50).float())):
        synth = SynthesizerSpec().build((config.context, config.width), context_dim=context_dim)
        cost = measured(lambda s=synth, c=ctx: s(h, c))
        assert cost == synth.multiply_adds(dense_context=ctx is not None and ctx.is_floating_point())
        assert cost / block_multiply_adds(config) <= 0.10, (context_dim, cost)
