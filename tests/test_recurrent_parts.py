"""The parts of a recurrent method and their checks: what `method_parts`, `AuxTask` and `TruncatedBPTT` refuse, and
the old `TruncatedBPTT` keywords (method=, discount=, …) mapped onto the same parts (the references and helpers
are those of test_recurrent_core.py)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from synthgrad.errors import ConfigError
from synthgrad.interface import Bootstrap, LambdaReturn, TrueGradient
from synthgrad.recurrent import AuxTask, RecurrentMethod, TruncatedBPTT, method_parts
from test_recurrent_core import boundary, make_data, make_model, mse_step_loss, sgd


def test_bad_configuration_is_a_clear_error() -> None:
    core, readout = make_model()
    for T in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="T must be"):
            TruncatedBPTT(core, readout, mse_step_loss, sgd, T=T)
    for discount in (0.0, 1.5):
        with pytest.raises(ConfigError, match="discount must be in"):
            method_parts(core, sgd, discount=discount)
        with pytest.raises(ConfigError, match="discount must be in"):  # a rule built by hand is checked too
            TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, boundary=boundary(core, rule=Bootstrap(discount)))
    with pytest.raises(ConfigError, match="unknown recurrent method 'rtrl'"):
        method_parts(core, sgd, method="rtrl")
    with pytest.raises(ConfigError, match="unknown synthesizer target 'oracle'"):
        method_parts(core, sgd, synthesizer_target="oracle")
    with pytest.raises(ConfigError, match="truncated BPTT has no synthesizer"):
        method_parts(core, sgd, method="bptt", synthesizer_target="true")
    with pytest.raises(ConfigError, match="needs a boundary"):
        TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, aux=AuxTask.for_core(core))
    with pytest.raises(ConfigError, match="every=1"):
        TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, boundary=boundary(core, rule=TrueGradient(every=2)))
    with pytest.raises(ConfigError, match="weight must be >= 0"):
        AuxTask.for_core(core, weight=-1.0)
    tr = TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, boundary=boundary(core))
    inputs, targets, _ = make_data(4)
    with pytest.raises(ValueError, match="1..T=3"):
        tr.train_chunk(inputs, targets)
    scalar = TruncatedBPTT(core, readout, lambda p, t: mse_step_loss(p, t).mean(), sgd, T=3)
    with pytest.raises(ValueError, match="per example"):
        scalar.train_chunk(inputs[:3], targets[:3])
    for rule in (TrueGradient(), LambdaReturn(1.0, 1.0)):  # their targets need the whole sequence
        whole = TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, boundary=boundary(core, rule=rule))
        with pytest.raises(ConfigError, match="use train_sequence"):
            whole.train_chunk(inputs[:3], targets[:3])


OLD_KEYWORDS = [
    ({}, Bootstrap(1.0), False),  # the old default method: dni
    ({"method": "bptt"}, None, False),
    ({"method": RecurrentMethod.DNI, "discount": 0.3}, Bootstrap(0.3), False),
    ({"method": "dni-aux", "aux_weight": 0.5}, Bootstrap(1.0), True),
    ({"synthesizer_target": "true", "discount": 0.5}, TrueGradient(discount=0.5), False),
    ({"trace_decay": 0.7, "discount": 0.9}, LambdaReturn(0.9, 0.7), False),
]


@pytest.mark.parametrize(("old", "rule", "has_aux"), OLD_KEYWORDS)
def test_the_old_keywords_build_the_parts_they_name_and_train_the_same(old, rule, has_aux) -> None:
    """TruncatedBPTT(method=..., discount=..., ...) still works (with a DeprecationWarning): it builds the boundary
    rule and aux task those keywords named, and trains bit for bit as the same parts passed as objects."""
    core, readout = make_model()
    inputs, targets, mask = make_data(9)
    adam = lambda p: torch.optim.Adam(p, lr=0.05)  # noqa: E731
    with pytest.warns(DeprecationWarning, match="boundary=Interface"):
        old_tr = TruncatedBPTT(copy.deepcopy(core), copy.deepcopy(readout), mse_step_loss, adam, T=3,
                               synthesizer_optimizer=sgd, **old)  # fmt: skip
    assert (old_tr.boundary.rule if old_tr.boundary else None) == rule and (old_tr.aux is not None) == has_aux
    assert old_tr.method is RecurrentMethod(old.get("method", "dni"))
    new_core = copy.deepcopy(core)
    aux = AuxTask.for_core(new_core, old.get("aux_weight", 1.0)) if has_aux else None
    new_boundary = boundary(new_core, rule=rule) if rule is not None else None
    new_tr = TruncatedBPTT(new_core, copy.deepcopy(readout), mse_step_loss, adam, T=3, boundary=new_boundary, aux=aux)
    for tr in (old_tr, new_tr):
        tr.train_sequence(inputs, targets, mask)
    assert all(torch.equal(p, q) for p, q in zip(old_tr.parameters(), new_tr.parameters(), strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(old_tr.core.parameters(), core.parameters(), strict=True))


def test_the_old_keywords_keep_their_errors_and_refuse_to_mix_with_parts() -> None:
    core, readout = make_model()
    custom, custom_readout = make_model("custom")
    cases = [
        ({"trace_decay": 1.5}, ConfigError, "trace decay must be in"),
        ({"method": "bptt", "trace_decay": 0.5}, ConfigError, "truncated BPTT has no synthesizer"),
        ({"synthesizer_target": "true", "trace_decay": 0.5}, ConfigError, "exact target has none"),
        ({"method": "rtrl"}, ConfigError, "unknown recurrent method 'rtrl'"),
        ({"discount": 0.0}, ConfigError, "discount must be in"),
        ({"given_target": None}, TypeError, "given_target"),
    ]
    for old, error, match in cases:
        warns = pytest.warns(DeprecationWarning) if error is ConfigError else contextlib.nullcontext()
        with warns, pytest.raises(error, match=match):
            TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, **old)
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="trace_jacobian.*TwoPartCore has none"):
        TruncatedBPTT(custom, custom_readout, mse_step_loss, sgd, T=3, trace_decay=0.5)
    with pytest.raises(TypeError, match="not both"):
        TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, boundary=boundary(core), method="dni")
