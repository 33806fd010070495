"""M's targets that need the whole sequence (recurrent/sequence_targets.py): the exact discounted future gradient
(`TrueGradient`, [Note: true-target ablation]) and λ-returns through the core's trace Jacobian (`LambdaReturn`,
[Note: synthesizer traces]), against references computed with plain autograd (float64, as in
test_recurrent_core.py, whose helpers these are)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from synthgrad.core import synthesizer_loss
from synthgrad.errors import ConfigError
from synthgrad.interface import LambdaReturn, TrueGradient
from synthgrad.recurrent import LSTMCore, TruncatedBPTT, lambda_returns, method_parts, true_future_gradients
from test_recurrent_core import (
    CORES,
    IN,
    OUT,
    TOL,
    B,
    boundary,
    discounted_table,
    make_data,
    make_model,
    mse_step_loss,
    sgd,
)


@pytest.mark.parametrize("kind", sorted(CORES))
@pytest.mark.parametrize("discount", [1.0, 0.3])
def test_discounted_oracle_is_the_discounted_sum_of_future_chunk_gradients(kind, discount) -> None:
    core, readout = make_model(kind)
    inputs, targets, mask = make_data(11)
    expected = discounted_table(core, readout, inputs, targets, mask, 3, discount)
    lib = true_future_gradients(core, readout, mse_step_loss, inputs, targets, 3, mask, discount=discount)
    assert len(lib) == len(expected) == 3 and all(g.abs().max() > 1e-3 for g in expected)
    for g, g_lib in zip(expected, lib, strict=True):
        assert torch.allclose(g, g_lib, rtol=0, atol=TOL)


@pytest.mark.parametrize("discount", [1.0, 0.1])
def test_true_target_ablation_regresses_m_onto_the_exact_discounted_future_gradient(discount) -> None:
    """[Note: true-target ablation]: M's target at every boundary is the reference's exact future gradient
    discounted by λ per chunk (λ = 1: full BPTT's), under the weights at the start of the episode
    (`accumulate`: no core update inside it, so the boundary states are the reference's too); M trains on it,
    and the core still receives λ·M(s_end)."""
    core, readout = make_model()
    inputs, targets, mask = make_data(11)
    expected = [(None, g) for g in discounted_table(core, readout, inputs, targets, mask, 3, discount)]
    tr = TruncatedBPTT(copy.deepcopy(core), copy.deepcopy(readout), mse_step_loss, sgd, T=3,
                       boundary=boundary(core, rule=TrueGradient(discount=discount)))  # fmt: skip
    stats = tr.train_sequence(inputs, targets, mask, accumulate=True)
    assert stats[0].target is None and len(stats) == len(expected) + 1
    for s, (_, g) in zip(stats[1:], expected, strict=True):
        assert torch.allclose(s.target, g, rtol=0, atol=TOL)
    assert torch.count_nonzero(tr.synthesizer.net.out.weight) > 0  # M trained on those targets ...
    assert torch.count_nonzero(stats[2].synthetic) > 0  # ... and what it then predicts reaches the core
    bootstrapped = TruncatedBPTT(copy.deepcopy(core), copy.deepcopy(readout), mse_step_loss, sgd, T=3,
                                 boundary=boundary(core))  # fmt: skip
    boot = bootstrapped.train_sequence(inputs, targets, mask, accumulate=True)
    assert not torch.allclose(boot[1].target, stats[1].target, rtol=0, atol=1e-6)  # the choice matters


# -- [Note: synthesizer traces] ------------------------------------------------------------------------------


class DiagonalCore(nn.Module):
    """s' = a ⊙ s + tanh(W x): its Jacobian ∂s'/∂s is exactly diag(a), so the trace's diagonal is the whole truth."""

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        self.raw, self.inp = nn.Parameter(torch.randn(size)), nn.Linear(IN, size)
        self.output_size = size

    def decay(self) -> torch.Tensor:
        return torch.sigmoid(self.raw) * 1.5  # some entries above 1: nothing here relies on a contraction

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(batch, self.output_size, dtype=self.raw.dtype),)

    def step(self, x, state):
        (s,) = state
        s = self.decay() * s + torch.tanh(self.inp(x))
        return torch.tanh(s), (s,)

    def trace_jacobian(self, x, state, next_state) -> torch.Tensor:
        return self.decay().expand_as(state[0])  # a tensor: the diagonal


def lstm_without_recurrent_weights() -> LSTMCore:
    """Every path from h_{t-1} goes through weight_hh; at 0 the cell path is the whole Jacobian."""
    core = LSTMCore(IN, 5)
    with torch.no_grad():
        core.cell.weight_hh.zero_()
    return core


EXACT_CORES = {"diagonal": DiagonalCore, "lstm-no-recurrent-weights": lstm_without_recurrent_weights}


def materialize(jacobian, size: int) -> torch.Tensor:
    """A `TraceJacobian`'s Jᵀ as matrices (B, D, D): column n is Jᵀ applied to the n-th unit vector."""
    basis = torch.eye(size, dtype=torch.float64)
    return torch.stack([jacobian.carry(basis[n].expand(B, size)) for n in range(size)], dim=2)


def traced_trainer(core, readout, *, trace_decay: float, discount: float = 1.0) -> TruncatedBPTT:
    """DNI with a random (non-zero) linear M that stays fixed (lr 0), so λ-returns can be recomputed afterwards."""
    frozen = boundary(core, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), rule=LambdaReturn(discount, trace_decay))
    tr = TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, boundary=frozen)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tr.synthesizer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return tr


@pytest.mark.parametrize("kind", list(EXACT_CORES))
@pytest.mark.parametrize("discount", [1.0, 0.5])
def test_full_trace_with_an_exact_jacobian_returns_the_exact_future_gradient(discount, kind) -> None:
    """For a core whose trace Jacobian is its whole Jacobian (a diagonal core; an LSTM without recurrent
    weights, whose Jacobian is the cell path), μ = 1 turns the bootstrapped targets of any M into the exact
    discounted future gradient (the true-target ablation's), and μ = 0 leaves them the bootstrap."""
    torch.manual_seed(0)
    core = EXACT_CORES[kind]().double()
    readout = nn.Linear(core.output_size, OUT).double()
    inputs, targets, mask = make_data(11)
    expected = discounted_table(core, readout, inputs, targets, mask, 3, discount)
    tr = traced_trainer(copy.deepcopy(core), copy.deepcopy(readout), trace_decay=1.0, discount=discount)
    stats = tr.train_sequence(inputs, targets, mask, accumulate=True)  # no core step inside the sequence
    _, returns = tr.lambda_returns(stats[1:])
    assert len(returns) == len(expected) == 3
    for g, g_lib in zip(expected, returns, strict=True):
        assert torch.allclose(g_lib, g, rtol=0, atol=TOL)
    assert not torch.allclose(stats[1].target, expected[0], rtol=0, atol=1e-3)  # the bootstrap alone is not
    _, plain = lambda_returns(tr.boundary, stats[1:], discount=discount, decay=0.0)
    assert all(torch.equal(g, s.target) for g, s in zip(plain, stats[1:], strict=True))


@pytest.mark.parametrize(("trace_decay", "discount"), [(1.0, 1.0), (0.6, 0.3)])
def test_lambda_return_update_equals_the_online_accumulating_trace_update(trace_decay, discount) -> None:
    """The forward view M trains on (one step per sequence) has the gradient of the backward view: at every
    boundary j, the TD errors δ_j = y_j − M(s_j) times the trace E_j = λμ E_{j-1} A_{j-1} + I ⊗ [s_j, 1], with
    A_k the matrix of the chunk's trace Jacobian Jᵀ (accumulate BP(λ) with the LSTM's cell path), computed here
    from the chunks' records alone."""
    core, readout = make_model()
    inputs, targets, mask = make_data(14)
    tr = traced_trainer(core, readout, trace_decay=trace_decay, discount=discount)
    stats = tr.train_sequence(inputs, targets, mask)[1:]
    assert stats[0].jacobian is not None and stats[-1].jacobian is None  # no transport beyond the sequence's end
    predictions, returns = tr.lambda_returns(stats)
    loss = sum(synthesizer_loss(p, g) for p, g in zip(predictions, returns, strict=True))
    lin = tr.synthesizer.net.out
    w_grad, b_grad = torch.autograd.grad(loss, [lin.weight, lin.bias])
    size = lin.weight.shape[0]
    online, trace = torch.zeros(size, size + 1, dtype=torch.float64), None
    for j, s in enumerate(stats):
        features = torch.cat([s.start, torch.ones_like(s.start[:, :1])], 1)  # (B, D + 1)
        # step[b, n, i, :]: how δ_j[b, n] moves row i of M's [weight, bias]
        step = torch.eye(size, dtype=torch.float64)[None, :, :, None] * features[:, None, None, :]
        if trace is not None:
            carried = torch.einsum("bmif,bmn->bnif", trace, materialize(stats[j - 1].jacobian, size))
            trace = discount * trace_decay * carried + step
        else:
            trace = step
        delta = s.target - lin(s.start).detach()  # (B, D)
        online -= 2 / B * torch.einsum("bnif,bn->if", trace, delta)
    assert torch.allclose(w_grad, online[:, :-1], rtol=0, atol=TOL)
    assert torch.allclose(b_grad, online[:, -1], rtol=0, atol=TOL)


def chunk_jacobians(core, inputs, state0):
    """(the trace Jacobian of the chunk `inputs` from `state0` (steps composed with `then`), autograd's exact
    ∂s_end/∂s_start as (B, D rows, D columns))."""
    states = [state0]
    for x in inputs:
        states.append(core.step(x, states[-1])[1])
    steps = [core.trace_jacobian(x, s, n) for x, s, n in zip(inputs, states[:-1], states[1:], strict=True)]

    def run(*start):
        s = start
        for x in inputs:
            s = core.step(x, s)[1]
        return torch.cat(s, 1)

    full = torch.autograd.functional.jacobian(run, state0)  # per start tensor: (B, D, B, H)
    exact = torch.cat([torch.stack([part[b, :, b, :] for b in range(B)]) for part in full], dim=2)
    return functools.reduce(lambda acc, j: acc.then(j), steps), exact


def test_lstm_trace_jacobian_is_the_exact_c_columns_of_a_step_and_all_of_it_without_recurrent_weights() -> None:
    """LSTMCore.trace_jacobian equals autograd's ∂(h_t, c_t)/∂c_{t-1} and drops the h_{t-1} columns, which the
    step reaches only through the recurrent weights; without them, a chunk's product is its whole Jacobian."""
    core, _ = make_model()
    inputs, _, _ = make_data(3)
    state0 = (torch.randn(B, 5, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64))
    kept, exact = chunk_jacobians(core, inputs[:1], state0)
    kept = materialize(kept, 10).transpose(1, 2)  # J itself: (B, 10, 10)
    assert torch.allclose(kept[:, :, 5:], exact[:, :, 5:], rtol=0, atol=TOL)
    assert torch.all(kept[:, :, :5] == 0) and exact[:, :, :5].abs().max() > 1e-3  # dropped, and not 0

    flat_core = lstm_without_recurrent_weights().double()
    kept, exact = chunk_jacobians(flat_core, inputs, state0)
    assert torch.allclose(materialize(kept, 10).transpose(1, 2), exact, rtol=0, atol=TOL)
    assert exact[:, :5, 5:].abs().max() > 1e-3  # the readout h_end ← c_start, which the forget gates miss


def test_trace_decay_bad_configuration_is_a_clear_error() -> None:
    core, readout = make_model()
    for mu in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="trace decay must be in"):
            method_parts(core, sgd, trace_decay=mu)
        with pytest.raises(ConfigError, match="trace decay must be in"):
            TruncatedBPTT(core, readout, mse_step_loss, sgd, T=3, boundary=boundary(core, rule=LambdaReturn(1.0, mu)))
    with pytest.raises(ConfigError, match="truncated BPTT has no synthesizer"):
        method_parts(core, sgd, method="bptt", trace_decay=0.5)
    with pytest.raises(ConfigError, match="exact target has none"):
        method_parts(core, sgd, synthesizer_target="true", trace_decay=0.5)
    custom, custom_readout = make_model("custom")
    with pytest.raises(ConfigError, match="trace_jacobian.*TwoPartCore has none"):
        TruncatedBPTT(custom, custom_readout, mse_step_loss, sgd, T=3, boundary=boundary(custom, rule=LambdaReturn()))
