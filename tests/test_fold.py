"""Folding in true gradients ([Note: folding in true gradients] in synthgrad/decoupled.py)."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthgrad.decoupled import DecoupledSequential, decouple
from synthgrad.models import fcn
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec


class Zero(nn.Module):
    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(h)


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 5, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
        for _ in range(n)
    ]


def folding_net(layers: int) -> tuple[nn.Module, DecoupledSequential, torch.Tensor, torch.Tensor]:
    """A small float FCN with linear synthesizers, folding every batch, and one batch for it."""
    torch.manual_seed(0)
    model = fcn((1, 5, 5), 3, layers=layers, width=6)
    x, y = batches(1)[0]
    x = x.float()
    net = decouple(model, x, synthesizer=SynthesizerSpec(SynthesizerKind.LINEAR, ()), fold_every=1)
    return model, net, x, y


@pytest.mark.parametrize("every", [1, 2, 3])
def test_zero_synthesizer_with_folding_is_delayed_backprop(every: int) -> None:
    """ĝ = 0: module i's step-t update is exactly the true gradient of batch t − (N−1−i) (if that batch is one
    of every k-th), taken through the parameters every module had when that batch went forward (the pipeline's
    delays, stashed weights)."""
    torch.manual_seed(0)
    layers, lr, steps = 4, 0.1, 9
    model = fcn((1, 5, 5), 3, layers=layers, width=6).double()
    sgd = lambda ps: torch.optim.SGD(ps, lr=lr)  # noqa: E731
    data = batches(steps)
    net = decouple(copy.deepcopy(model), data[0][0], synthesizer=lambda s: Zero(), optimizer=sgd, fold_every=every)
    n = len(net.blocks)

    # Reference: a snapshot of the whole chain before every step; batch s's gradient uses snapshot s.
    ref = nn.Sequential(*copy.deepcopy(net.blocks))
    snapshots = []
    for t, (x, y) in enumerate(data):
        snapshots.append(copy.deepcopy(ref))
        grads = []
        for i in range(n):
            s = t - (n - 1 - i)
            if s < 0 or (s % every and i < n - 1):  # the top module is exact on every batch
                grads.append(None)
                continue
            chain = copy.deepcopy(snapshots[s])
            xs, ys = data[s]
            F.cross_entropy(chain(xs), ys).backward()
            grads.append([p.grad for p in chain[i].parameters()])
        with torch.no_grad():
            for i, g in enumerate(grads):
                for p, gp in zip(ref[i].parameters(), g or [], strict=False):
                    p -= lr * gp
        net.train_step(x, y)
        for i in range(n):
            for a, b in zip(net.blocks[i].parameters(), ref[i].parameters(), strict=True):
                assert torch.allclose(a, b, atol=1e-12), f"module {i} differs at step {t}"


def test_folding_without_it_lower_modules_never_move_with_a_zero_synthesizer() -> None:
    """The test above can fail: without folding, a zero synthesizer leaves module 0 where it was."""
    torch.manual_seed(0)
    model = fcn((1, 5, 5), 3, layers=3, width=6).double()
    data = batches(4)
    plain = decouple(copy.deepcopy(model), data[0][0], synthesizer=lambda s: Zero(), lr=1e-2)
    folded = decouple(copy.deepcopy(model), data[0][0], synthesizer=lambda s: Zero(), lr=1e-2, fold_every=1)
    w0 = next(model.parameters()).detach().clone()
    for x, y in data:
        plain.train_step(x, y)
        folded.train_step(x, y)
    assert torch.equal(next(plain.stages[0].parameters()), w0)
    assert not torch.equal(next(folded.stages[0].parameters()), w0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_folding_keeps_modules_update_unlocked(k: int) -> None:
    """f_i's update at step t does not depend on anything f_{i+1} (or any module above) computes at step t, with
    folding as without: scaling block k's output at the third step leaves blocks 0 … k−1 exactly as they are
    without the perturbation, and changes block k's successors. (In one process the updates are applied together
    at the end of the step, [Note: batched optimizer steps] in optim.py; the dependency is what unlocking means.)"""

    def unlocked_net():
        _, net, x, y = folding_net(layers=4)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():  # non-zero synthetic gradients from the first step
            for p in net.synthesizers.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        for _ in range(2):
            net.train_step(x, y)
        return net, x, y

    (net, x, y), (other, _, _) = unlocked_net(), unlocked_net()
    net.train_step(x, y)
    nets = [net, other]
    handle = nets[1].blocks[k].register_forward_hook(lambda module, inputs, out: out * 1.5)
    nets[1].train_step(x, y)
    handle.remove()
    for i, (a, b) in enumerate(zip(nets[0].blocks, nets[1].blocks, strict=True)):
        same = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
        assert same == (i < k), i


def test_folding_learns_a_linear_synthesizer_and_refuses_complete_unlock() -> None:
    model, net, x, y = folding_net(layers=3)
    synth = copy.deepcopy(net.synthesizers[0].state_dict())
    for _ in range(3):
        stats = net.train_step(x, y)
    assert all(torch.isfinite(torch.tensor(stats.sg_loss)))
    assert any(not torch.equal(v, net.synthesizers[0].state_dict()[k]) for k, v in synth.items())
    with pytest.raises(ValueError, match="complete unlock"):
        decouple(model, x, unlock=True, fold_every=1)


def test_a_folded_batch_is_freed_once_its_residual_is_applied() -> None:
    """No reference cycle keeps an old graph alive (it leaked ~9 MB per step on the 6-layer FCN once)."""
    model, net, x, y = folding_net(layers=4)
    net.train_step(x, y)
    first = weakref.ref(net.stages[0].flights[0].output)
    for _ in range(len(net.blocks) + 1):
        net.train_step(x, y)
    assert first() is None  # freed by reference counting alone, without a garbage-collector pass


@pytest.mark.parametrize("every", [1, 2])
def test_what_comes_down_is_the_true_gradient_of_the_folded_batch(every: int) -> None:
    """Each cut receives ∂ℓ_s/∂h_s of its folded batches, in order, as backprop computes it with the weights
    batch s saw; that is what its synthesizer regresses onto and what is folded into the module."""
    torch.manual_seed(0)
    model = fcn((1, 5, 5), 3, layers=4, width=6).double()
    data = batches(8)
    net = decouple(model, data[0][0], synthesizer=SynthesizerSpec(SynthesizerKind.LINEAR, ()), fold_every=every)
    net.double()
    received: dict[int, list[torch.Tensor]] = {j: [] for j in range(len(net.synthesizers))}

    def recording(j, receive):
        def record(message, **kwargs):
            if message is not None:
                received[j].append(message.detach().clone())
            return receive(message, **kwargs)

        return record

    for j, stage in enumerate(net.stages[:-1]):
        stage.receive = recording(j, stage.receive)
    expected = []
    for t, (x, y) in enumerate(data):
        if t % every == 0:
            expected.append(net.true_gradients(x, y))  # the weights batch t sees, batch-norm statistics untouched
        net.train_step(x, y)
    n = len(net.blocks)
    for j, got in received.items():
        assert len(got) == len(expected) - max(0, (n - 2 - j) // every), f"cut {j} received {len(got)}"
        for s, g in enumerate(got):
            assert torch.allclose(g, expected[s][j], atol=1e-10), f"cut {j}, folded batch {s}"
