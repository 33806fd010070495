"""The synthetic-gradient maths against the paper's definitions (PAPER.md §1, §8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synthgrad.core import (
    backward_through,
    batch_cosine,
    one_hot_context,
    synthesizer_loss,
    to_module_grad,
    to_synthesizer_units,
)
from synthgrad.synthesizers import (
    ConvSynthesizer,
    LinearSynthesizer,
    LowRankSynthesizer,
    MLPSynthesizer,
    SynthesizerKind,
    SynthesizerSpec,
    zero_init_,
)

SYNTHESIZERS = [
    ("linear", lambda c: LinearSynthesizer((7,), context_dim=c), (7,)),
    ("lowrank", lambda c: LowRankSynthesizer((7,), rank=3, context_dim=c), (7,)),
    ("mlp", lambda c: MLPSynthesizer((7,), hidden=(5, 4), context_dim=c), (7,)),
    ("mlp-no-bn", lambda c: MLPSynthesizer((7,), hidden=(5,), batch_norm=False, context_dim=c), (7,)),
    ("conv", lambda c: ConvSynthesizer((3, 6, 6), hidden=(4, 4), kernel_size=3, context_dim=c), (3, 6, 6)),
    ("input-mlp", lambda c: MLPSynthesizer((1, 4, 4), (9,), hidden=(8,), context_dim=c), (1, 4, 4)),
]


@pytest.mark.parametrize("context_dim", [0, 4])
@pytest.mark.parametrize(("name", "make", "shape"), SYNTHESIZERS, ids=[s[0] for s in SYNTHESIZERS])
def test_synthesizer_starts_at_exactly_zero(name, make, shape, context_dim) -> None:
    torch.manual_seed(0)
    synth = make(context_dim)
    assert torch.count_nonzero(synth.out.weight) == 0 and torch.count_nonzero(synth.out.bias) == 0
    h = torch.randn(5, *shape) * 100
    ctx = one_hot_context(torch.tensor([0, 1, 2, 3, 0]), 4) if context_dim else None
    out = synth(h, ctx)
    assert out.shape == (5, *synth.out_shape)
    assert torch.count_nonzero(out) == 0
    # ...and it is not stuck there: one gradient step on a non-zero target moves it.
    synthesizer_loss(out, torch.ones_like(out)).backward()
    assert synth.out.bias.grad.abs().sum() > 0


def test_zero_init_zeroes_weight_and_bias() -> None:
    layer = nn.Linear(3, 2)
    assert torch.count_nonzero(layer.bias) > 0
    zero_init_(layer)
    assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0


def test_conditioned_synthesizer_needs_context() -> None:
    with pytest.raises(ValueError, match="context"):
        LinearSynthesizer((3,), context_dim=2)(torch.randn(2, 3))


def test_context_changes_prediction() -> None:
    torch.manual_seed(0)
    synth = LinearSynthesizer((3,), context_dim=2)
    nn.init.normal_(synth.out.weight)
    h = torch.randn(1, 3).repeat(2, 1)
    out = synth(h, one_hot_context(torch.tensor([0, 1]), 2))
    assert not torch.allclose(out[0], out[1])


def test_spec_builds_each_kind() -> None:
    assert isinstance(SynthesizerSpec(SynthesizerKind.LINEAR).build((4,)), MLPSynthesizer)
    assert len(SynthesizerSpec(SynthesizerKind.MLP, (8, 8)).build((4,)).hidden) == 6  # 2 × (Linear, BN, ReLU)
    assert isinstance(SynthesizerSpec(SynthesizerKind.CONV, (2,)).build((3, 4, 4)), ConvSynthesizer)


def test_synthesizer_loss_is_sum_over_features_mean_over_batch() -> None:
    """[Note: SG loss scale]: L = (1/B) Σ_b ‖ĝ_b − g_b‖², written out with loops."""
    torch.manual_seed(0)
    pred, target = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    expected = 0.0
    for b in range(4):
        expected += sum(float(pred[b].flatten()[f] - target[b].flatten()[f]) ** 2 for f in range(6))
    expected /= 4
    assert synthesizer_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # Duplicating the batch leaves it unchanged (a mean over examples); duplicating features doubles it (a sum).
    assert synthesizer_loss(pred.repeat(2, 1, 1), target.repeat(2, 1, 1)).item() == pytest.approx(expected, rel=1e-6)
    assert synthesizer_loss(torch.cat([pred, pred], 1), torch.cat([target, target], 1)).item() == pytest.approx(
        2 * expected, rel=1e-6
    )


def test_synthesizer_loss_never_reaches_the_target() -> None:
    pred = torch.randn(3, 2, requires_grad=True)
    target = torch.randn(3, 2, requires_grad=True)
    synthesizer_loss(pred, target).backward()
    assert pred.grad is not None and target.grad is None


def test_synthesizer_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="target"):
        synthesizer_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_units_round_trip_and_scale() -> None:
    """[Note: SG units]: synthesizers speak per-example gradients, B × ∂(batch mean)/∂h."""
    g = torch.randn(8, 5)
    assert torch.allclose(to_module_grad(g), g / 8)
    assert torch.allclose(to_synthesizer_units(to_module_grad(g)), g)
    # The per-example gradient of a batch-mean loss does not depend on the batch size.
    w = torch.randn(5)
    for batch in (2, 16):
        h = torch.randn(1, 5).repeat(batch, 1).requires_grad_(True)
        (h @ w).pow(2).mean().backward()
        assert torch.allclose(to_synthesizer_units(h.grad)[0], 2 * (h[0] @ w) * w)


def test_backward_through_is_the_bootstrapped_target() -> None:
    """δ_i = (∂h_{i+1}/∂h_i)ᵀ ĝ_{i+1} (PAPER.md §1), against the explicit Jacobian, in per-example units."""
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).double()
    h = torch.randn(5, 4, dtype=torch.float64)
    g_next = torch.randn(5, 3, dtype=torch.float64)  # per-example synthetic gradient of f's output
    leaf = h.clone().requires_grad_(True)
    target = backward_through(f(leaf), to_module_grad(g_next), leaf)
    for b in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0)).squeeze(0), h[b])  # (3, 4)
        assert torch.allclose(target[b], jac.T @ g_next[b])
    # ...and the module's parameters received (∂h/∂θ)ᵀ ĝ / B.
    assert f[0].weight.grad is not None


def test_backward_through_scalar_loss_returns_true_gradient() -> None:
    w = torch.randn(3)
    leaf = torch.randn(4, 3, requires_grad=True)
    target = backward_through((leaf @ w).mean(), None, leaf)
    assert torch.allclose(target, w.expand(4, 3))  # B · (1/B) w


def test_batch_cosine() -> None:
    a = torch.randn(6, 2, 3)
    assert batch_cosine(a, 3 * a).item() == pytest.approx(1.0, abs=1e-6)
    assert batch_cosine(a, -a).item() == pytest.approx(-1.0, abs=1e-6)


def test_lowrank_label_path_is_full_rank() -> None:
    """[Note: label path]: a rank-1 synthesizer still learns a different vector for each of 10 labels (a table of
    rank 10), because the context does not pass through the bottleneck; the h path is rank 1 as promised."""
    torch.manual_seed(0)
    m = LowRankSynthesizer((32,), rank=1, context_dim=10)
    assert m.down.weight.shape == (1, 32) and m.label.weight.shape == (32, 10)
    table = torch.randn(10, 32)  # the target of label k: row k, whatever h is
    opt = torch.optim.Adam(m.parameters(), lr=3e-2)
    for _ in range(400):
        labels = torch.randint(0, 10, (64,))
        loss = synthesizer_loss(m(torch.randn(64, 32), nn.functional.one_hot(labels, 10).float()), table[labels])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-2 * table.pow(2).sum(1).mean().item()  # a rank-1 bottleneck could fit one direction of it
    with torch.no_grad():
        m.label.weight.zero_()
        m.out.bias.zero_()
        jac = torch.func.jacrev(lambda h: m(h[None], torch.zeros(1, 10))[0])(torch.randn(32))
    assert torch.linalg.matrix_rank(jac).item() == 1


@pytest.mark.parametrize("context_dim", [0, 4])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 3)])
def test_lowrank_closed_form_fit_is_the_autograd_gradient(context_dim, shape) -> None:
    """[Note: closed-form fit]: `accumulate_fit` adds to `.grad` exactly what `synthesizer_loss(...).backward()`
    would, with random (not zero-initialised) weights, on top of a gradient already there, and returns the loss."""
    torch.manual_seed(0)
    m = LowRankSynthesizer(shape, rank=3, context_dim=context_dim)
    for p in m.parameters():
        nn.init.normal_(p)
    h, target = torch.randn(5, *shape, dtype=torch.float64), torch.randn(5, *shape, dtype=torch.float64)
    context = one_hot_context(torch.tensor([0, 1, 3, 3, 2]), 4, torch.float64) if context_dim else None
    m = m.double()
    loss = synthesizer_loss(m(h, context), target)
    expected = [g.clone() for g in torch.autograd.grad(loss, list(m.parameters()))]
    before = [torch.randn_like(p) for p in m.parameters()]
    for p, g in zip(m.parameters(), before, strict=True):
        p.grad = g.clone()
    with torch.no_grad():
        got = m.accumulate_fit(h, context, m(h, context), target)
    torch.testing.assert_close(got, loss.detach())
    for p, g0, g in zip(m.parameters(), before, expected, strict=True):
        torch.testing.assert_close(p.grad, g0 + g)
