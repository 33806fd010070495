"""DecoupledSequential: update unlocking, the bootstrapped target in place, p-updates, complete unlock."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import synthgrad.interface as interface_mod
from synthgrad.core import one_hot_context, to_module_grad
from synthgrad.decoupled import DecoupledSequential, decouple
from synthgrad.models import cnn, fcn
from synthgrad.synthesizers import LinearSynthesizer, SynthesizerKind, SynthesizerSpec


def random_linear_synth(shape, context_dim=0):
    """A linear synthesizer with non-zero weights, so that synthetic gradients are non-zero from step 1."""
    s = LinearSynthesizer(shape, context_dim=context_dim).double()
    nn.init.normal_(s.out.weight, std=0.3)
    nn.init.normal_(s.out.bias, std=0.3)
    return s


def small_net(update_prob=1.0, optimizer=None, unlock=False, seed=0) -> DecoupledSequential:
    torch.manual_seed(seed)
    model = fcn((6,), 3, layers=4, width=5).double()
    return decouple(
        model,
        torch.zeros(2, 6, dtype=torch.float64),
        synthesizer=random_linear_synth,
        optimizer=optimizer,
        lr=1e-2,
        update_prob=update_prob,
        unlock=unlock,
        input_synthesizer=SynthesizerSpec(SynthesizerKind.MLP, (8,)),
        seed=seed,
    ).double()


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_module_update_does_not_wait_for_the_module_above(k: int) -> None:
    """Update unlocking: f_i's update at a step is fixed before f_{i+1} runs, so nothing the modules above compute
    in that step reaches it. Scaling block k's output changes every block from k up and none below. (`train_step`
    applies the updates together at the end of the step, [Note: batched optimizer steps] in optim.py: the numbers
    are those of updating each module at once, and the dependency is what unlocking means.)"""
    x, y = batch()
    nets = [small_net(), small_net()]
    nets[0].train_step(x, y)
    handle = nets[1].blocks[k].register_forward_hook(lambda module, inputs, out: out * 1.5)
    nets[1].train_step(x, y)
    handle.remove()
    same = [
        all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
        for a, b in zip(nets[0].blocks, nets[1].blocks, strict=True)
    ]
    assert same == [i < k for i in range(len(same))]


def test_module_update_is_exactly_the_synthetic_gradient_no_leak() -> None:
    """With SGD(lr=1), module 0 moves by −(∂h/∂θ)ᵀ ĝ / B and nothing else: the SG loss does not leak in."""
    net = small_net(optimizer=lambda ps: torch.optim.SGD(ps, lr=1.0))
    x, y = batch()
    stage0, synth0 = copy.deepcopy(net.blocks[0]), copy.deepcopy(net.synthesizers[0])
    h = stage0(x)
    g = synth0(h.detach())
    grads = torch.autograd.grad(h, list(stage0.parameters()), to_module_grad(g))
    expected = [p.detach() - gr for p, gr in zip(stage0.parameters(), grads, strict=True)]
    net.train_step(x, y)
    for got, want in zip(net.blocks[0].parameters(), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-12)
    assert not torch.equal(params(net.synthesizers[0])[0], params(synth0)[0])  # the synthesizer did learn


def test_synthesizer_regresses_onto_bootstrapped_target(monkeypatch) -> None:
    """M_0's target is (∂f_1/∂h_0)ᵀ ĝ_1 with f_1 and M_1 as they were before this step; the top one sees ∂L."""
    net = small_net()
    x, y = batch()
    stages, synths = copy.deepcopy(net.blocks), copy.deepcopy(net.synthesizers)
    recorded = []
    real_loss = interface_mod.synthesizer_loss

    def spy(pred, target):
        recorded.append(target.detach().clone())
        return real_loss(pred, target)

    monkeypatch.setattr(interface_mod, "synthesizer_loss", spy)
    net.train_step(x, y)
    h0 = stages[0](x)
    h1 = stages[1](h0.detach().requires_grad_(True))
    leaf = h0.detach().requires_grad_(True)
    h1 = stages[1](leaf)
    (t0,) = torch.autograd.grad(h1, leaf, synths[1](h1.detach()))
    assert torch.allclose(recorded[0], t0, atol=1e-12)
    # Top cut: the true per-example gradient of the loss.
    hs = [x]
    for s in stages[:-1]:
        hs.append(s(hs[-1].detach()))
    leaf = hs[-1].detach().requires_grad_(True)
    (t_top,) = torch.autograd.grad(F.cross_entropy(stages[-1](leaf), y), leaf)
    assert torch.allclose(recorded[-1], t_top * len(y), atol=1e-12)


def test_update_prob_one_always_updates() -> None:
    net = small_net(update_prob=1.0)
    for step in range(5):
        before = [params(s) for s in net.blocks]
        stats = net.train_step(*batch(step))
        assert stats.updated == [True] * 4
        for s, b in zip(net.blocks, before, strict=True):
            assert any(not torch.equal(p, q) for p, q in zip(params(s), b, strict=True))


def test_update_prob_one_equals_unset_generator() -> None:
    """p = 1 draws nothing: two nets with different update-draw seeds train identically."""
    a, b = small_net(seed=0), small_net(seed=0)
    for stage in b.stages:
        stage.generator.manual_seed(12345)
    for step in range(3):
        a.train_step(*batch(step))
        b.train_step(*batch(step))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_update_prob_skips_modules_and_synthesizers() -> None:
    net = small_net(update_prob=0.5)
    flags = []
    for step in range(60):
        before_stage = [params(s) for s in net.blocks]
        before_synth = [params(s) for s in net.synthesizers]
        stats = net.train_step(*batch(step))
        flags += stats.updated
        for i, updated in enumerate(stats.updated):
            same = all(torch.equal(p, q) for p, q in zip(params(net.blocks[i]), before_stage[i], strict=True))
            assert same != updated
            if i < len(net.synthesizers) and not updated:
                assert all(torch.equal(p, q) for p, q in zip(params(net.synthesizers[i]), before_synth[i], strict=True))
    assert 0.35 < sum(flags) / len(flags) < 0.65


def test_update_draws_are_seeded_and_checkpointed() -> None:
    a = small_net(update_prob=0.3, seed=1)
    a.train_step(*batch(0))
    state = copy.deepcopy(a.training_state())
    b = small_net(update_prob=0.3, seed=1)
    b.load_training_state(state)
    for step in range(1, 6):
        assert a.train_step(*batch(step)).updated == b.train_step(*batch(step)).updated
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_complete_unlock_trains_on_synthetic_inputs() -> None:
    net = small_net(unlock=True)
    x, y = batch()
    isynths = copy.deepcopy(net.input_synthesizers)
    seen = {}
    handles = [
        net.blocks[i].register_forward_pre_hook(lambda m, inp, i=i: seen.setdefault(i, []).append(inp[0].detach()))
        for i in (1, 2)
    ]
    net.train_step(x, y)
    for h in handles:
        h.remove()
    # Each module ran once on the real input (no grad) and once, for training, on I_i(x).
    assert torch.allclose(seen[1][1], isynths[0](x))
    assert torch.allclose(seen[2][1], isynths[1](x))
    assert not torch.allclose(seen[1][0], seen[1][1])


def test_complete_unlock_input_synthesizers_learn_real_inputs() -> None:
    torch.manual_seed(0)
    net = small_net(unlock=True)
    x, y = batch(n=32)
    first = net.train_step(x, y).input_loss
    for _ in range(150):
        last = net.train_step(x, y).input_loss
    assert len(first) == 3 and all(b < 0.5 * a for a, b in zip(first, last, strict=True))


def test_complete_unlock_keeps_batch_norm_statistics_real() -> None:
    """Running statistics come from the real forward pass only (the synthetic one runs with them frozen)."""
    net = small_net(unlock=True)
    x, y = batch()
    stage0, stage1 = copy.deepcopy(net.blocks[0]), copy.deepcopy(net.blocks[1])
    with torch.no_grad():
        stage1(stage0(x))
    net.train_step(x, y)
    assert torch.allclose(net.blocks[1][1].running_mean, stage1[1].running_mean)
    assert torch.allclose(net.blocks[1][1].running_var, stage1[1].running_var)


def test_true_gradients_touch_nothing() -> None:
    net = small_net()
    x, y = batch()
    buffers = [b.clone() for b in net.buffers()]
    grads = net.true_gradients(x, y)
    assert [g.shape for g in grads] == [(8, 5)] * 3
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True))
    assert all(p.grad is None for p in net.parameters())
    stats = net.train_step(x, y, diagnose=True)
    assert stats.true_cosine is not None and len(stats.true_cosine) == 3


def test_decouple_cuts() -> None:
    model = fcn((6,), 3, layers=4, width=5)
    x = torch.zeros(2, 6)
    assert len(decouple(copy.deepcopy(model), x, cuts=[]).stages) == 1
    assert len(decouple(copy.deepcopy(model), x, cuts=[1]).stages) == 2
    assert len(decouple(copy.deepcopy(model), x).stages) == 4
    with pytest.raises(ValueError, match="cuts"):
        decouple(copy.deepcopy(model), x, cuts=[3])


def test_backprop_is_one_module_with_no_synthesizer() -> None:
    torch.manual_seed(0)
    model = fcn((6,), 3, layers=3, width=5).double()
    ref = copy.deepcopy(model)
    net = decouple(model, torch.zeros(2, 6, dtype=torch.float64), cuts=[], lr=1e-2)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(3):
        x, y = batch(step)
        net.train_step(x, y)
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    assert all(torch.allclose(p, q) for p, q in zip(net.parameters(), ref.parameters(), strict=True))


def test_cnn_cdni_step_runs_with_conv_synthesizers() -> None:
    torch.manual_seed(0)
    net = decouple(
        cnn((1, 8, 8), 4, layers=3, channels=4, kernel_size=3),
        torch.zeros(2, 1, 8, 8),
        context_dim=4,
        synthesizer=SynthesizerSpec(SynthesizerKind.CONV, (4,), kernel_size=3),
    )
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    stats = net.train_step(x, y, one_hot_context(y, 4), diagnose=True)
    assert len(stats.sg_loss) == 2 and torch.isfinite(torch.tensor(stats.loss))


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="update_prob"):
        small_net(update_prob=0.0)
    with pytest.raises(ValueError, match="synthesizers"):
        DecoupledSequential(
            [nn.Linear(2, 2), nn.Linear(2, 2)],
            [],
            loss_fn=F.cross_entropy,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        )


@pytest.mark.parametrize(
    "options",
    [{"context_dim": 3}, {"fold_every": 2}, {"context_dim": 3, "update_prob": 0.6}, {"target_every": 2}],
    ids=["cdni", "dni-fold2", "cdni-update-p", "sparse-targets"],
)
def test_closed_form_fit_trains_the_chain_as_autograd_does(options: dict) -> None:
    """[Note: closed-form fit]: ten float64 steps of a chain whose low-rank synthesizers fit in closed form and of
    the same chain made to fit them through autograd end with the same weights and Adam moments."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 1, 5, 5, generator=gen).double(), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(10)]  # fmt: skip
    model = fcn((1, 5, 5), 3, layers=4, width=12).double()
    nets = []
    for closed in (True, False):
        torch.manual_seed(2)
        net = decouple(copy.deepcopy(model), data[0][0], seed=3, lr=1e-3,
                       synthesizer=SynthesizerSpec(SynthesizerKind.LOWRANK, (4,)), **options).double()  # fmt: skip
        assert net.stages[0].interface.closed_form
        for stage in net.stages[:-1]:
            stage.interface.allow_closed_form = closed
        for x, y in data:
            net.train_step(x, y, one_hot_context(y, 3, torch.float64) if "context_dim" in options else None)
        nets.append(net)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    synth_moments = [
        [s.interface.optimizer.state[p]["exp_avg"] for p in s.interface.synthesizer.parameters()]
        for net in nets for s in net.stages[:1]
    ]  # fmt: skip
    torch.testing.assert_close(synth_moments[0], synth_moments[1], rtol=1e-9, atol=1e-12)
