"""The decoupled schedule as data, and its in-process executor: what staleness S means, pinned by hand.

Everything here runs in one process in a few seconds; tests/test_parallel.py checks that K processes compute
exactly what `LocalExecutor` computes.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthgrad.core import one_hot_context
from synthgrad.decoupled import DecoupledSequential, decouple, infer_shapes
from synthgrad.interface import Bootstrap, TrueGradient
from synthgrad.models import fcn
from synthgrad.pipeline import LocalExecutor
from synthgrad.schedule import Action, DecoupledSchedule
from synthgrad.synthesizers import LinearSynthesizer, SynthesizerKind, SynthesizerSpec

SHAPE = (1, 5, 5)


def batches(n: int, seed: int = 1, dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, *SHAPE, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


def chain(layers: int = 4, **kw) -> DecoupledSequential:
    torch.manual_seed(0)
    spec = SynthesizerSpec(SynthesizerKind.LOWRANK, (4,))
    ispec = SynthesizerSpec(SynthesizerKind.MLP, (8,))
    return decouple(fcn(SHAPE, 3, layers=layers, width=6), torch.zeros(2, *SHAPE), synthesizer=spec,
                    input_synthesizer=ispec, context_dim=3, **kw)  # fmt: skip


def executor(net: DecoupledSequential, staleness: int) -> LocalExecutor:
    schedule = DecoupledSchedule(len(net.stages), staleness, net.rule, unlock=net.unlocked)
    return LocalExecutor(list(net.stages), schedule, infer_shapes(net.blocks, torch.zeros(2, *SHAPE)), SHAPE)


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# -- the schedule as data ---------------------------------------------------------------------------------------


def test_ops_of_a_three_stage_pipeline_read_as_the_docstring_says() -> None:
    s = DecoupledSchedule(3, 1, Bootstrap())
    assert [str(op) for op in s.ops(0, 0)] == ["step(0)", "send_activation(0)"]
    assert [str(op) for op in s.ops(1, 4)] == [
        "recv_activation(4)", "step(4)", "send_target(4)", "send_activation(4)", "recv_target(3)",
    ]  # fmt: skip
    assert [str(op) for op in s.ops(2, 4)] == ["recv_activation(4)", "step(4)", "send_target(4)"]
    assert "t=1   stage 0: step(1) send_activation(1) recv_target(0)" in s.format(2)


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_every_target_is_consumed_exactly_s_steps_late(staleness: int) -> None:
    s = DecoupledSchedule(4, staleness, Bootstrap())
    for k in range(3):
        for t in range(12):
            recv = [op.step for op in s.ops(k, t) if op.action is Action.RECV_TARGET]
            assert recv == ([t - staleness] if t >= staleness else [])


def test_fold_timing_one_stage_lower_is_s_plus_one_steps_later() -> None:
    """[Note: fold timing]: the top sends the true gradient of kept batches at once; each stage lower S + 1 later."""
    s = DecoupledSchedule(3, 1, TrueGradient(every=2))
    carries = {k: [t for t in range(10) if s.carries_target(k, t)] for k in (1, 2)}
    assert carries == {2: [0, 2, 4, 6, 8], 1: [2, 4, 6, 8]}
    assert s.unconsumed_targets(0, 5) == [4] and s.unconsumed_targets(1, 5) == [4]


def test_a_complete_unlock_stage_receives_its_real_input_s_steps_late() -> None:
    s = DecoupledSchedule(3, 2, Bootstrap(), unlock=True)
    assert [str(op) for op in s.ops(1, 5)] == [
        "recv_real_input(3)", "send_real_output(3)", "step(5)", "send_target(5)", "recv_target(3)",
    ]  # fmt: skip
    assert s.unconsumed_real_inputs(1, 5) == [3, 4] and s.unconsumed_real_inputs(2, 5) == []


# -- the in-process executor ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [{}, {"fold_every": 1}, {"fold_every": 3, "update_prob": 0.7}, {"unlock": True, "update_prob": 0.8}],
    ids=["bootstrap", "fold1", "fold3-p0.7", "unlock-p0.8"],
)
def test_staleness_zero_is_train_step(kw: dict) -> None:
    a, b = chain(**kw), chain(**kw)
    run = executor(b, 0)
    for x, y in batches(10):
        c = one_hot_context(y, 3)
        a.train_step(x, y, c)
        run.tick(x, y, c)
    assert same(a, b)


@pytest.mark.parametrize("kw", [{}, {"fold_every": 2}, {"unlock": True}], ids=["bootstrap", "fold2", "unlock"])
def test_staleness_changes_what_is_computed(kw: dict) -> None:
    """The test above can fail: with S = 1 the same batches give other weights."""
    a, b = chain(**kw), chain(**kw)
    run0, run1 = executor(a, 0), executor(b, 1)
    for x, y in batches(6):
        run0.tick(x, y, one_hot_context(y, 3))
        run1.tick(x, y, one_hot_context(y, 3))
    assert not same(a.stages[0], b.stages[0])


def test_what_s_means_by_hand() -> None:
    """Two linear stages, SGD, a linear synthesizer, S = 1, computed with plain tensor algebra: at tick t stage 0
    updates from ĝ_0(t) = M_0(h_0(t)) at once, and M_0 regresses — with its current weights — onto the target of
    step t − 1, B·∂ℓ/∂h_0 through stage 1's weights at step t − 1 (the top's true gradient)."""
    torch.manual_seed(0)
    lr, slr, b = 0.1, 0.05, 8
    f0, f1 = nn.Linear(25, 4, bias=False).double(), nn.Linear(4, 3, bias=False).double()
    m0 = LinearSynthesizer((4,)).double()
    nn.init.normal_(m0.out.weight, std=0.3)  # non-zero from the start, so ĝ matters at once
    W0, W1 = f0.weight.detach().clone(), f1.weight.detach().clone()
    A, c = m0.out.weight.detach().clone(), m0.out.bias.detach().clone()
    net = DecoupledSequential(
        [nn.Sequential(nn.Flatten(), f0), f1], [m0], loss_fn=F.cross_entropy,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=lr), synthesizer_optimizer=lambda ps: torch.optim.SGD(ps, lr=slr),
    )  # fmt: skip
    run = executor_of(net, staleness=1)
    waiting = []  # (h_0, target) of steps whose target has not been consumed yet
    for x, y in batches(6, dtype=torch.float64):
        run.tick(x, y)
        xf = x.flatten(1)
        h0 = xf @ W0.T  # stage 0, tick t: forward, ĝ, update at once
        g_hat = h0 @ A.T + c
        W0 = W0 - lr * (g_hat / b).T @ xf
        p = F.softmax(h0 @ W1.T, 1) - F.one_hot(y, 3)  # stage 1 (the top), its step t: the true loss gradient
        waiting.append((h0, p @ W1))  # B·∂L/∂h_0 = (softmax − onehot) W1: M_0's target for step t
        W1 = W1 - lr * (p / b).T @ h0
        if len(waiting) > 1:  # end of tick t: stage 0 consumes the target of step t − 1 with its current M_0
            h_old, target = waiting.pop(0)
            err = 2 * (h_old @ A.T + c - target) / b  # ∂/∂ĝ of (1/B) Σ_b ‖ĝ_b − target_b‖²
            A, c = A - slr * err.T @ h_old, c - slr * err.sum(0)
    assert torch.allclose(f0.weight, W0, atol=1e-12) and torch.allclose(f1.weight, W1, atol=1e-12)
    assert torch.allclose(m0.out.weight, A, atol=1e-12) and torch.allclose(m0.out.bias, c, atol=1e-12)


def executor_of(net: DecoupledSequential, staleness: int) -> LocalExecutor:
    schedule = DecoupledSchedule(len(net.stages), staleness, net.rule)
    shapes = infer_shapes(net.blocks, torch.zeros(2, *SHAPE, dtype=torch.float64))
    return LocalExecutor(list(net.stages), schedule, shapes, SHAPE)


# -- a stage's state ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"fold_every": 1}, {"fold_every": 3, "update_prob": 0.6}], ids=["fold1", "fold3-p0.6"])
def test_a_checkpoint_mid_pipeline_continues_exactly(kw: dict) -> None:
    """S = 2, folding: after 5 ticks each stage holds predictions awaiting targets, folded batches in flight (with
    their graphs) and unconsumed messages; a fresh chain loaded from their saved state continues bit for bit."""
    data = batches(12)
    a = chain(**kw)
    run_a = executor(a, 2)
    for x, y in data[:5]:
        run_a.tick(x, y, one_hot_context(y, 3))
    assert any(s.flights for s in a.stages) and any(s.pending for s in a.stages)
    saved = copy.deepcopy([s.training_state() for s in a.stages])
    mail = dict(run_a.transport.mail)
    b = chain(**kw)
    for stage, state in zip(b.stages, saved, strict=True):
        stage.load_training_state(state)
    run_b = executor(b, 2)
    run_b.transport.mail.update(mail)
    run_b.ticks = 5
    for x, y in data[5:]:
        run_a.tick(x, y, one_hot_context(y, 3))
        run_b.tick(x, y, one_hot_context(y, 3))
    assert same(a, b)


def test_a_stage_refuses_a_message_the_schedule_did_not_plan() -> None:
    """Fold timing is the schedule's: a stage whose folds fall out of step with it fails loudly, not silently."""
    net = chain(fold_every=2)
    shapes = infer_shapes(net.blocks, torch.zeros(2, *SHAPE))
    wrong = DecoupledSchedule(4, 0, TrueGradient(every=3))  # the stages fold every 2nd batch
    run = LocalExecutor(list(net.stages), wrong, shapes, SHAPE)
    with pytest.raises(RuntimeError, match="fold timing"):
        for x, y in batches(6):
            run.tick(x, y, one_hot_context(y, 3))


# -- the stale-gradient pipeline --------------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "staleness"), [(2, 1), (3, 1), (3, 2)])
def test_the_stale_pipeline_is_backprop_delayed_by_the_schedule(layers: int, staleness: int) -> None:
    """No synthesizer, every batch folded (`build_stale_network`): module i's update at step t is exactly the true
    gradient of batch t − (N−1−i)(S+1), taken through the weights every module had when that batch went forward."""
    torch.manual_seed(0)
    lr, steps = 0.1, 9
    model = fcn(SHAPE, 3, layers=layers, width=6).double()
    sgd = lambda ps: torch.optim.SGD(ps, lr=lr)  # noqa: E731
    data = batches(steps, dtype=torch.float64)
    net = decouple(copy.deepcopy(model), data[0][0], synthesizer=lambda s: None, optimizer=sgd, fold_every=1)
    run = executor_of(net, staleness)
    n = len(net.stages)
    ref, snapshots = copy.deepcopy(model), []
    for t, (x, y) in enumerate(data):
        snapshots.append(copy.deepcopy(ref))
        grads = []
        for i in range(n):
            s = t - (n - 1 - i) * (staleness + 1)
            if s < 0:
                grads.append(None)
                continue
            chain_s = copy.deepcopy(snapshots[s])
            xs, ys = data[s]
            F.cross_entropy(chain_s(xs), ys).backward()
            grads.append([p.grad for p in chain_s[i].parameters()])
        with torch.no_grad():
            for i, g in enumerate(grads):
                for p, gp in zip(ref[i].parameters(), g or [], strict=False):
                    p -= lr * gp
        run.tick(x, y)
        for i in range(n):
            for a, b in zip(net.blocks[i].parameters(), ref[i].parameters(), strict=True):
                assert torch.allclose(a, b, atol=1e-12), f"module {i} differs at step {t}"
