"""The two-network system (PAPER.md §5): who updates when, what reaches A's weights, what M regresses onto."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from synthgrad.recurrent.multinet import MultiNetSystem
from synthgrad.recurrent.tasks import MultiNetTask

B = 4


def tiny_system(method: str, T: int = 3) -> tuple[MultiNetSystem, MultiNetTask]:  # noqa: N803
    torch.manual_seed(0)
    images, labels = torch.rand(64, 28, 28), torch.randint(0, 10, (64,))
    system = MultiNetSystem(T, method=method, a_hidden=8, b_hidden=8, lr=1e-2)
    return system, MultiNetTask(images, labels, T=T)


@pytest.mark.parametrize(("method", "every"), [("bptt", 9), ("dni", 3)])
def test_locked_a_updates_every_T_squared_steps_and_dni_a_every_T(method, every):
    """A's optimizer steps, stamped with the clock (A-steps taken), T = 3: locked at 9, 18 (once per episode,
    with B); DNI at 3, 6, 9, ... (every window). B updates once per episode either way."""
    system, task = tiny_system(method, T=3)
    stamps: list[int] = []
    system.a_optimizer.register_step_post_hook(lambda *_: stamps.append(system.a_steps))
    b_stamps: list[int] = []
    system.b_optimizer.register_step_post_hook(lambda *_: b_stamps.append(system.a_steps))
    for seed in range(2):  # two episodes, 18 A-steps
        system.train_episode(task.sample(4, torch.Generator().manual_seed(seed)))
    assert stamps == list(range(every, 19, every))
    assert b_stamps == [9, 18]
    assert system.a_updates == len(stamps)


@pytest.mark.parametrize("method", ["bptt", "dni"])
def test_only_a_s_own_update_reaches_its_weights(method):
    """Every A parameter accumulates a gradient exactly once per A update and is cleared by it: with the DNI,
    neither the synthesizer's loss nor B's loss ever reaches A's weights."""
    system, task = tiny_system(method)
    accumulations = []
    for p in system.a.parameters():
        p.register_post_accumulate_grad_hook(lambda p: accumulations.append(id(p)))
    m_before = [p.detach().clone() for p in system.synthesizer.parameters()] if method == "dni" else []
    episode = system.train_episode(task.sample(4, torch.Generator().manual_seed(1)))
    n_params = len(list(system.a.parameters()))
    assert len(accumulations) == n_params * system.a_updates
    assert all(p.grad is None for p in system.a.parameters())
    if method == "dni":  # the synthesizer did train, on a loss that stayed away from A
        assert episode.sg_loss is not None
        assert any(not torch.equal(a, b) for a, b in zip(m_before, system.synthesizer.parameters(), strict=True))


def test_the_synthesizer_regresses_onto_b_s_true_gradient_of_each_message():
    """M's targets are B·∂(Σ_k B's loss_k)/∂m_k for the episode's messages, the gradient the locked system sends
    A through each message: checked by recomputing it with B's weights from before its update."""
    system, task = tiny_system("dni", T=3)
    batch = task.sample(4, torch.Generator().manual_seed(2))
    b_before = copy.deepcopy(system.b)
    seen: list[tuple[Tensor, Tensor]] = []
    regress = system.message.regress

    def spy(prediction: Tensor, target: Tensor, *args, **kwargs):
        seen.append((prediction.detach().clone(), target.clone()))
        return regress(prediction, target, *args, **kwargs)

    messages: list[Tensor] = []
    window = system.a.window

    def recording_window(xs, state):
        logits, message, state = window(xs, state)
        messages.append(message.detach().clone())
        return logits, message, state

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(system.message, "regress", spy)
        mp.setattr(system.a, "window", recording_window)
        system.train_episode(batch)
    ((_, targets),) = seen
    sent = [m.requires_grad_(True) for m in messages]
    state, loss = b_before.initial_state(4), torch.zeros(())
    for m, count in zip(sent, batch.b_counts, strict=True):
        logits, state = b_before.tick(m, state)
        loss = loss + F.cross_entropy(logits, count)
    expected = torch.autograd.grad(loss, sent)
    assert torch.allclose(targets, torch.cat(expected) * 4, atol=1e-6)  # per-example units: × batch


def a_first_gradient(system: MultiNetSystem, batch) -> list[Tensor]:
    """The gradient A's optimizer applies at its first step (the end of the first window, with the DNI)."""
    seen: list[list[Tensor]] = []
    params = list(system.a.parameters())
    system.a_optimizer.register_step_pre_hook(lambda *_: seen.append([p.grad.clone() for p in params]))
    system.train_episode(batch)
    return seen[0]


@pytest.mark.parametrize("zero", [False, True])
def test_a_update_carries_the_synthetic_gradient_on_its_message(zero) -> None:
    """With the DNI, A's first update is ∇(A's own loss + ⟨m_1, ĝ_1⟩/B), ĝ_1 = M(m_1), through the first window:
    with a non-zero M it differs from A's own loss alone, with M at zero (its initialisation) it is exactly that."""
    torch.manual_seed(0)
    task = MultiNetTask(torch.rand(64, 28, 28), torch.randint(0, 10, (64,)), T=3)
    batch = task.sample(B, torch.Generator().manual_seed(1))
    system = MultiNetSystem(3, method="dni", a_hidden=8, b_hidden=8, lr=1e-2)
    if not zero:
        with torch.no_grad():
            for p in system.synthesizer.parameters():
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    a, m = copy.deepcopy(system.a), copy.deepcopy(system.synthesizer)
    got = a_first_gradient(system, batch)
    logits, message, _ = a.window(batch.inputs[:3], a.initial_state(B))
    own = F.cross_entropy(logits, batch.a_counts[0])
    synthetic = m(message.detach()).detach()
    expected = torch.autograd.grad(own + (message * synthetic / B).sum(), list(a.parameters()), retain_graph=True)
    own_only = torch.autograd.grad(own, list(a.parameters()))
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-7)
    moved = max((g - o).abs().max().item() for g, o in zip(got, own_only, strict=True))
    assert (moved == 0.0) if zero else (moved > 1e-4)
