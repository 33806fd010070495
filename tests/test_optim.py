"""Batched optimizer steps ([Note: batched optimizer steps] in synthgrad/optim.py): the lockstep chain's one fused
update per step gives the same numbers, bit for bit, as one update per module and per synthesizer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthgrad.core import one_hot_context
from synthgrad.decoupled import decouple
from synthgrad.models import fcn
from synthgrad.optim import adam, batched_steps, step_and_clear
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec

CASES = {
    "dni-fold3": {"fold_every": 3, "lr": 1e-3},
    "cdni": {"context_dim": 3, "lr": 1e-3},
    "dni-update-p": {"fold_every": 2, "update_prob": 0.6, "lr": 1e-3},
    "cdni-unlock": {"context_dim": 3, "unlock": True, "lr": 1e-3},
    "synthesizer-lr": {"context_dim": 3, "lr": 1e-3, "synthesizer_optimizer": adam(3e-3)},
    "zero-synthesizer": {"fold_every": 1, "lr": 1e-3, "synthesizer": lambda shape: None},  # steps without grads
}


def _state(net: nn.Module) -> list[torch.Tensor]:
    """Every weight, buffer, gradient and optimizer moment of the chain, in a fixed order."""
    out = [t.detach().clone() for t in net.state_dict().values()]
    optimizers = [m.optimizer for m in net.modules() if getattr(m, "optimizer", None) is not None]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                out.append(torch.zeros(0) if p.grad is None else p.grad.clone())
                out.extend(v.clone() for v in optimizer.state[p].values())
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_steps_equal_one_step_per_module(case: str) -> None:
    """Ten lockstep steps with the batched update (`train_step`) and with one update per optimizer (`_lockstep`
    outside any `batched_steps` scope) leave identical weights, gradients and Adam moments."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 1, 5, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(10)]
    options = {"synthesizer": SynthesizerSpec(SynthesizerKind.LOWRANK, (4,)), **CASES[case]}
    conditioned = options.get("context_dim", 0) > 0
    model = fcn((1, 5, 5), 3, layers=4, width=12)
    nets = []
    for _ in range(2):
        torch.manual_seed(2)  # the synthesizers' initialisation
        inputs = SynthesizerSpec(SynthesizerKind.MLP, (8,)) if options.get("unlock") else None
        nets.append(decouple(copy.deepcopy(model), data[0][0], seed=3, input_synthesizer=inputs, **options))
    for x, y in data:
        context = one_hot_context(y, 3) if conditioned else None
        nets[0].train_step(x, y, context)
        nets[1]._lockstep(x, y, context, False)
    batched, single = _state(nets[0]), _state(nets[1])
    assert len(batched) == len(single) > 0
    for a, b in zip(batched, single, strict=True):
        assert torch.equal(a, b)


def _adam_pair(*, fused: bool = True) -> tuple[nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    return layer, torch.optim.Adam(layer.parameters(), lr=1e-2, fused=fused)


def _loss(layer: nn.Linear) -> torch.Tensor:
    return F.mse_loss(layer(torch.ones(2, 4)), torch.zeros(2, 3))


@pytest.mark.parametrize("fused", [True, False])
def test_first_steps_and_other_optimizers_fall_back_in_order(fused: bool) -> None:
    """An Adam without state yet (its first step) or not fused steps on its own; either way the scope applies it
    at its end, zeroes the gradient, and equals the unbatched update."""
    (a, opt_a), (b, opt_b) = _adam_pair(fused=fused), _adam_pair(fused=fused)
    for _ in range(3):
        _loss(a).backward()
        with batched_steps():
            step_and_clear(opt_a)
            assert a.weight.grad.abs().sum() > 0  # queued, not applied yet
        _loss(b).backward()
        step_and_clear(opt_b)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        assert not a.weight.grad.any()


def test_same_optimizer_twice_in_a_scope_is_refused() -> None:
    """A second update of a queued optimizer would apply both gradients summed at the scope's end: refused."""
    layer, opt = _adam_pair()
    _loss(layer).backward()
    with pytest.raises(RuntimeError, match="stepped twice"), batched_steps():
        step_and_clear(opt)
        _loss(layer).backward()
        step_and_clear(opt)


def test_updates_queued_before_an_exception_are_applied() -> None:
    """The scope closes on an exception as the unbatched steps would have left things: updated, zeroed."""
    (a, opt_a), (b, opt_b) = _adam_pair(), _adam_pair()
    for layer, opt in ((a, opt_a), (b, opt_b)):
        _loss(layer).backward()
        step_and_clear(opt)
    _loss(a).backward()
    with pytest.raises(RuntimeError, match="boom"), batched_steps():
        step_and_clear(opt_a)
        raise RuntimeError("boom")
    _loss(b).backward()
    step_and_clear(opt_b)
    assert torch.equal(a.weight, b.weight) and not a.weight.grad.any()


def test_skipped_update_is_zeroed_at_once() -> None:
    """update=False (update decoupling) zeroes the gradient immediately and queues nothing."""
    layer, opt = _adam_pair()
    before = layer.weight.detach().clone()
    _loss(layer).backward()
    with batched_steps():
        step_and_clear(opt, update=False)
        assert not layer.weight.grad.any()
    assert torch.equal(layer.weight, before)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"method": "cdni"}, 0.9),
        ({"model": "gpt", "method": "backprop"}, 0.9),
        ({"model": "gpt", "method": "dni", "beta1": 0.5}, 0.5),
        ({"method": "dni", "beta1": 0.0}, 0.0),
    ],
)
def test_beta1_reaches_the_modules_adam_and_not_the_synthesizers(values: dict, expected: float) -> None:
    """`--beta1` (or the method's default) is the β1 of every module's Adam; the synthesizers keep torch's 0.9."""
    from synthgrad.config import from_dict
    from synthgrad.training import build_network

    cfg = from_dict({"train_limit": 512, **values}).validate().resolve()
    assert cfg.beta1 == expected
    shape = (64,) if cfg.model == "gpt" else (1, 28, 28)
    net = build_network(cfg, shape, 50 if cfg.model == "gpt" else 10)
    for stage in net.stages:
        assert stage.optimizer.param_groups[0]["betas"] == (expected, 0.999)
        if stage.interface is not None and stage.interface.optimizer is not None:
            assert stage.interface.optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_beta1_out_of_range_is_a_config_error() -> None:
    from synthgrad.config import from_dict
    from synthgrad.errors import ConfigError

    with pytest.raises(ConfigError, match="--beta1 must be in"):
        from_dict({"beta1": 1.0}).validate()
