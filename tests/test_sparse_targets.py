"""Sparse targets ([Note: sparse targets] in synthgrad/interface.py): `Bootstrap(every=k)` trains each synthesizer
on every k-th batch's bootstrapped target, and the module above skips its input gradient on the others."""

from __future__ import annotations

import copy

import pytest
import torch

from synthgrad.config import Method, TrainConfig
from synthgrad.core import one_hot_context
from synthgrad.errors import ConfigError
from synthgrad.interface import Bootstrap
from synthgrad.schedule import Action, DecoupledSchedule
from test_schedule import batches, chain, executor, same


def params_equal(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_every_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="every >= 1"):
        Bootstrap(every=0)


def test_only_every_kth_step_carries_a_target() -> None:
    s = DecoupledSchedule(3, 1, Bootstrap(every=3))
    for k in (1, 2):
        sent = [op.carries for t in range(9) for op in s.ops(k, t) if op.action is Action.SEND_TARGET]
        assert sent == [t % 3 == 0 for t in range(9)]
    received = [(op.step, op.carries) for t in range(10) for op in s.ops(0, t) if op.action is Action.RECV_TARGET]
    assert received == [(m, m % 3 == 0) for m in range(9)]  # S = 1 late


def test_synthesizers_step_only_on_targeted_batches_and_modules_on_every_batch() -> None:
    """Against the paper's rule on the same batches: step 0 is targeted under both, so both nets agree after it;
    at step 1 the modules apply the same ĝ (the synthesizers are the same), but only every=1's synthesizers train."""
    dense, sparse = chain(3), chain(3, target_every=2)
    (x0, y0), (x1, y1), (x2, y2) = batches(3)
    a = dense.train_step(x0, y0, one_hot_context(y0, 3))
    b = sparse.train_step(x0, y0, one_hot_context(y0, 3))
    assert same(dense, sparse) and a.sg_loss == b.sg_loss
    before = copy.deepcopy(sparse)
    dense.train_step(x1, y1, one_hot_context(y1, 3))
    stats = sparse.train_step(x1, y1, one_hot_context(y1, 3))
    assert all(torch.isnan(torch.tensor(stats.sg_loss)))  # nothing regressed
    for d, s, b in zip(dense.stages, sparse.stages, before.stages, strict=True):
        assert params_equal(d.block, s.block)  # the same ĝ applied
        # ... and applied: the modules did update (not stage 0 yet: its synthesizer's first target, at step 0,
        # was the zero ĝ of stage 1 carried back, so it still predicts zero)
        assert params_equal(s.block, b.block) == (s.index == 0)
        if s.interface is not None:
            assert params_equal(s.interface, b.interface)  # no target, no synthesizer step
            assert not params_equal(d.interface, s.interface)
    stats = sparse.train_step(x2, y2, one_hot_context(y2, 3))
    assert not any(torch.isnan(torch.tensor(stats.sg_loss)))
    assert not params_equal(sparse.stages[0].interface, before.stages[0].interface)


def test_a_pipeline_with_sparse_targets_is_train_step_at_s0_and_differs_at_s1() -> None:
    a, b, c = chain(target_every=2), chain(target_every=2), chain(target_every=2)
    run0, run1 = executor(b, 0), executor(c, 1)
    for x, y in batches(8):
        ctx = one_hot_context(y, 3)
        a.train_step(x, y, ctx)
        run0.tick(x, y, ctx)
        run1.tick(x, y, ctx)
    assert same(a, b)
    assert not same(a.stages[0], c.stages[0])


def test_the_module_above_skips_its_input_gradient() -> None:
    net = chain(2, target_every=2)
    x, y = batches(1)[0]
    top = net.stages[1]
    out = top.step(torch.randn(8, 6), y, None, True)
    assert out.down is not None  # step 0: targeted
    out = top.step(torch.randn(8, 6), y, None, True)
    assert out.down is None  # step 1: its backward pass stopped at its weights


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="target-every must be >= 1"):
        TrainConfig(method=Method.CDNI, target_every=0).validate()
    with pytest.raises(ConfigError, match="without folding"):
        TrainConfig(method=Method.DNI, fold_every=3, target_every=2).validate()
    with pytest.raises(ConfigError, match="without folding"):
        TrainConfig(method=Method.BACKPROP, target_every=2).validate()
    assert TrainConfig(method=Method.DNI, target_every=2).validate().resolve().fold_every == 0
    assert TrainConfig(method=Method.DNI).validate().resolve().fold_every == 3
