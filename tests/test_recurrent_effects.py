"""Every option that changes recurrent training, tested by what it does to an update, not by its echo.

The trainers are built as `synthgrad train` builds them (`CopySetup` from a `RecurrentConfig`), so a test fails
if an option stops reaching the parts (`RecurrentConfig.parts`) as well as if a part stops doing its job: the
discount scales the synthetic gradient's share of the core's update; the aux weight scales the auxiliary loss's;
the true target is `true_future_gradients`; traces change M's update (checked by hand on a scalar core). The
two networks' synthetic gradient: test_recurrent_multinet.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from synthgrad.interface import Bootstrap, Interface, LambdaReturn
from synthgrad.recurrent import (
    BoundarySynthesizer,
    RecurrentConfig,
    RecurrentMethod,
    RecurrentTask,
    SynthesizerTarget,
    TruncatedBPTT,
    bce_step_loss,
    true_future_gradients,
)
from synthgrad.recurrent.copy_loop import CopySetup

B = 4


def copy_setup(**changes: object) -> CopySetup:
    """Copy's trainer for a tiny config (LSTM 8, T = 3), its M and aux head set to fixed non-zero weights (zero,
    they would add nothing to any update)."""
    cfg = RecurrentConfig(task=RecurrentTask.COPY, hidden_size=8, batch_size=B, T=3, max_samples=1, **changes)
    setup = CopySetup(cfg.validate().resolve(), None)
    g = torch.Generator().manual_seed(11)
    tr = setup.trainer
    with torch.no_grad():
        for part in (tr.synthesizer, tr.aux_head):
            for p in part.parameters() if part is not None else ():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return setup


def sequence(steps: int = 9) -> tuple[Tensor, Tensor, Tensor]:
    """inputs (S, B, 9), bit targets (S, B, 8), a mask (S, B) that scores most steps."""
    g = torch.Generator().manual_seed(5)
    inputs = torch.randn(steps, B, 9, generator=g)
    targets = torch.randint(0, 2, (steps, B, 8), generator=g).float()
    return inputs, targets, (torch.rand(steps, B, generator=g) < 0.8).float()


def first_update(setup: CopySetup) -> Tensor:
    """The gradient the core's optimizer applies at its first step (the first chunk, T steps: task loss + λ·ĝ at
    its end (+ L_aux)), all its parameters flattened."""
    seen: list[Tensor] = []
    opt = setup.trainer.optimizer
    hook = opt.register_step_pre_hook(
        lambda o, *_: seen.append(torch.cat([p.grad.flatten() for g in o.param_groups for p in g["params"]]))
    )
    setup.trainer.train_sequence(*sequence())
    hook.remove()
    return seen[0]


def test_the_discount_scales_the_synthetic_gradients_share_of_the_cores_update() -> None:
    """--discount λ: the core's gradient is its task loss's plus λ times the synthetic gradient's part, for the
    bootstrap and for traces (Copy's default rule) alike; truncated BPTT's gives the task loss's part."""
    task = first_update(copy_setup(method=RecurrentMethod.BPTT))
    for trace_decay in (0.0, 1.0):
        full = first_update(copy_setup(discount=1.0, trace_decay=trace_decay)) - task
        tenth = first_update(copy_setup(discount=0.1, trace_decay=trace_decay)) - task
        assert full.norm() > 1e-3 * task.norm()
        assert torch.allclose(tenth, 0.1 * full, rtol=1e-3, atol=1e-8)


def test_the_aux_weight_scales_the_aux_losss_gradient_into_the_core() -> None:
    """--aux-weight w (DNI + Aux): the core's gradient has w times the auxiliary loss's part."""
    base = first_update(copy_setup(method=RecurrentMethod.DNI_AUX, aux_weight=0.0))
    tenth = first_update(copy_setup(method=RecurrentMethod.DNI_AUX, aux_weight=0.1)) - base
    half = first_update(copy_setup(method=RecurrentMethod.DNI_AUX, aux_weight=0.5)) - base
    assert tenth.norm() > 1e-6 * base.norm()
    assert torch.allclose(half, 5 * tenth, rtol=1e-3, atol=1e-8)
    dni = first_update(copy_setup(method=RecurrentMethod.DNI))  # at weight 0 DNI + Aux's core update is DNI's
    assert torch.equal(base[: dni.numel()], dni)


@pytest.mark.parametrize("discount", [1.0, 0.5])
def test_the_true_target_is_the_exact_discounted_future_gradient(discount) -> None:
    """--synthesizer-target true: M's target at every boundary is `true_future_gradients` of the episode under
    the weights at its start, discounted by --discount; the bootstrap's targets are other."""
    inputs, targets, mask = sequence()
    setup = copy_setup(synthesizer_target=SynthesizerTarget.TRUE, discount=discount)
    tr = setup.trainer
    expected = true_future_gradients(copy.deepcopy(tr.core), copy.deepcopy(tr.readout), bce_step_loss, inputs,
                                     targets, 3, mask, discount=discount)  # fmt: skip
    stats = tr.train_sequence(inputs, targets, mask)
    assert len(stats) == len(expected) + 1 and stats[0].target is None
    assert all(torch.equal(s.target, g) for s, g in zip(stats[1:], expected, strict=True))
    boot = copy_setup(discount=discount, trace_decay=0.0).trainer.train_sequence(inputs, targets, mask)
    assert not torch.allclose(boot[2].target, stats[2].target, atol=1e-4)


def test_trace_decay_reaches_m_one_step_per_sequence_on_the_lambda_return() -> None:
    """--trace-decay μ > 0: M steps once per sequence (traces) instead of once per boundary, to other weights."""
    inputs, targets, mask = sequence()
    traced, plain = copy_setup(trace_decay=1.0).trainer, copy_setup(trace_decay=0.0).trainer
    for tr in (traced, plain):
        tr.train_sequence(inputs, targets, mask)
    assert (traced.boundary.updates, plain.boundary.updates) == (1, 2)  # 3 chunks: 2 boundaries
    assert not torch.allclose(traced.synthesizer.net.out.weight, plain.synthesizer.net.out.weight, atol=1e-6)


class ScalarCore(nn.Module):
    """s' = a·s + u·x, output s', one unit: every Jacobian is a, so the traces are exact and checkable by hand
    (u = 1 is a weight for the core's optimizer, at lr 0)."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor(a, dtype=torch.float64))
        self.u = nn.Parameter(torch.ones((), dtype=torch.float64))

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        return (torch.zeros(batch, 1, dtype=torch.float64),)

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        s = self.a * state[0] + self.u * x
        return s, (s,)

    def trace_jacobian(self, x: Tensor, state: tuple[Tensor, ...], next_state: tuple[Tensor, ...]) -> Tensor:
        return self.a.expand_as(state[0])


@pytest.mark.parametrize(
    ("rule", "w", "c"),
    [
        # plain bootstrap, M stepped after chunks 1 and 2: targets y_1 = 2(s2 − y1)a + ĝ_2·a = −0.36 with
        # ĝ_2 = 0.5·0.3 + 0.2 = 0.35; then y_2 = 2(s3 − y2)a = 5.184 for M(s2) = 0.288·0.3 − 0.012 = 0.0744
        (Bootstrap(1.0), 0.288 - 0.1 * 2 * (0.0744 - 5.184) * 0.3, -0.012 - 0.1 * 2 * (0.0744 - 5.184)),
        # traces, μ = 1: G_2 = 5.184, G_1 = −0.36 + 0.8·(5.184 − 0.35) = 3.5072; one step on both boundaries
        (LambdaReturn(1.0, 1.0), 0.5 - 0.1 * (2 * (0.7 - 3.5072) + 2 * (0.35 - 5.184) * 0.3),
         0.2 - 0.1 * (2 * (0.7 - 3.5072) + 2 * (0.35 - 5.184))),
        # μ = 0: G_1 = y_1, still one step per sequence
        (LambdaReturn(1.0, 0.0), 0.5 - 0.1 * (2 * (0.7 + 0.36) + 2 * (0.35 - 5.184) * 0.3),
         0.2 - 0.1 * (2 * (0.7 + 0.36) + 2 * (0.35 - 5.184))),
    ],
    ids=["bootstrap", "traces", "traces-mu-0"],
)  # fmt: skip
def test_traces_change_m_update_as_computed_by_hand(rule, w, c) -> None:
    """One sequence of 3 steps, T = 1, one example: x = (1, −0.5, 2), targets (0.3, 0.7, −1), a = 0.8, so the
    boundary states are s1 = 1, s2 = 0.3 (and s3 = 2.24); M(s) = w·s + c starts at w = 0.5, c = 0.2 and is trained
    by SGD at 0.1 on (M(s) − target)². The bootstrap's first step: w = 0.5 − 0.1·2(0.7 + 0.36)·1 = 0.288, c =
    −0.012."""
    core = ScalarCore(0.8)
    m = BoundarySynthesizer.for_core(core)
    with torch.no_grad():
        m.net.out.weight.fill_(0.5)
        m.net.out.bias.fill_(0.2)
    sgd = lambda lr: lambda p: torch.optim.SGD(p, lr=lr)  # noqa: E731
    loss = lambda p, t: (p - t).pow(2).sum(1)  # noqa: E731
    tr = TruncatedBPTT(core, nn.Identity(), loss, sgd(0.0), T=1, boundary=Interface(m, sgd(0.1), rule=rule))
    x = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64).view(3, 1, 1)
    y = torch.tensor([0.3, 0.7, -1.0], dtype=torch.float64).view(3, 1, 1)
    stats = tr.train_sequence(x, y)
    assert [s.target.item() for s in stats[1:]] == pytest.approx([-0.36, 5.184], abs=1e-12)
    assert (m.net.out.weight.item(), m.net.out.bias.item()) == pytest.approx((w, c), abs=1e-12)
