"""Recurrent DNI against references computed here with plain autograd (PAPER.md §4).

The references never call the trainer's code: they unroll the core themselves and differentiate with
`torch.autograd.grad`. Float64 throughout, so agreement is to ~1e-12 and a 1e-9 tolerance is strict.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from synthgrad.core import synthesizer_loss
from synthgrad.interface import Bootstrap, Interface
from synthgrad.recurrent import (
    AuxTask,
    BoundarySynthesizer,
    LSTMCore,
    TruncatedBPTT,
    method_parts,
    state_shapes,
    true_future_gradients,
)

B, IN, OUT = 4, 3, 2
TOL = 1e-9


class TwoPartCore(nn.Module):
    """A user's own core whose state is (h (B, 4), m (B, 2, 3)): the trainer must not assume an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.gru, self.mix = nn.GRUCell(IN, 4), nn.Linear(4, 6)
        self.output_size = 10

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        w = self.mix.weight
        return (torch.zeros(batch, 4, dtype=w.dtype), torch.zeros(batch, 2, 3, dtype=w.dtype))

    def step(self, x, state):
        h, m = state
        h = self.gru(x, h + m.mean(2).repeat(1, 2))
        m = 0.5 * m + torch.tanh(self.mix(h)).view(-1, 2, 3)
        return torch.cat([h, m.flatten(1)], 1), (h, m)


CORES = {"lstm": lambda: LSTMCore(IN, 5), "custom": TwoPartCore}


def make_model(kind: str = "lstm", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    core = CORES[kind]().double()
    out_size = core.output_size
    return core, nn.Linear(out_size, OUT).double()


def make_data(steps: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(steps, B, IN, generator=g, dtype=torch.float64)
    targets = torch.randn(steps, B, OUT, generator=g, dtype=torch.float64)
    mask = (torch.rand(steps, B, generator=g) < 0.7).double()
    return inputs, targets, mask


def mse_step_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).sum(1)  # (B,)


def flat(state) -> torch.Tensor:
    return torch.cat([s.flatten(1) for s in state], 1)


def split(f: torch.Tensor, like) -> tuple[torch.Tensor, ...]:
    parts = torch.split(f, [s[0].numel() for s in like], 1)
    return tuple(p.reshape(s.shape) for p, s in zip(parts, like, strict=True))


def reference_unroll(core_at, readout_at, inputs, targets, mask, state, cut_every: int | None = None):
    """Plain unroll: `core_at(t)`, `readout_at(t)` choose the modules used at step t. Returns (loss per the
    documented reduction, [flattened state at every cut], outputs, final state)."""
    loss, cuts, outs = inputs.new_zeros(()), [], []
    for t in range(inputs.shape[0]):
        if cut_every and t > 0 and t % cut_every == 0:
            cuts.append(flat(state))
            state = split(cuts[-1], state)
        out, state = core_at(t).step(inputs[t], state)
        outs.append(out)
        loss = loss + (mse_step_loss(readout_at(t)(out), targets[t]) * mask[t]).mean()
    return loss, cuts, outs, state


def oracle_table(core, readout, inputs, targets, mask, T):  # noqa: N803
    """(flattened boundary state, true per-example gradient B·∂L/∂s) at every boundary, by full BPTT."""
    state = core.initial_state(B)
    loss, cuts, _, _ = reference_unroll(lambda t: core, lambda t: readout, inputs, targets, mask, state, T)
    grads = torch.autograd.grad(loss, cuts)
    return [(c.detach(), g * B) for c, g in zip(cuts, grads, strict=True)]


def discounted_table(core, readout, inputs, targets, mask, T, discount):  # noqa: N803
    """g_k = Σ_{j≥1} λ^{j-1}·B·∂L_{k+j}/∂s_k at every boundary k, each chunk's loss differentiated on its own
    through one full unroll (no recursion: an independent route to `true_future_gradients`' formula)."""
    state, cuts, chunk_losses = core.initial_state(B), [], []
    for lo, hi in chunks(inputs.shape[0], T):
        if lo > 0:
            cuts.append(flat(state))
            state = split(cuts[-1], state)
        loss = inputs.new_zeros(())
        for t in range(lo, hi):
            out, state = core.step(inputs[t], state)
            loss = loss + (mse_step_loss(readout(out), targets[t]) * mask[t]).mean()
        chunk_losses.append(loss)
    table = []
    for k, cut in enumerate(cuts):  # boundary k starts chunk k + 1
        g = torch.zeros_like(cut)
        for j, later in enumerate(chunk_losses[k + 1 :]):
            (d,) = torch.autograd.grad(later, cut, retain_graph=True, allow_unused=True)
            g = g + discount**j * B * (d if d is not None else 0)
        table.append(g)
    return table


class StateOracle(nn.Module):
    """A parameter-free synthesizer returning the true future gradient of whichever boundary state it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.table: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, source: torch.Tensor, context=None) -> torch.Tensor:
        for s, g in self.table:
            if torch.allclose(s, source, rtol=0, atol=1e-12):
                return g.clone()
        raise AssertionError("the oracle was shown a state that is not a boundary of this sequence")


def chunks(steps: int, T: int):  # noqa: N803
    return [(lo, min(lo + T, steps)) for lo in range(0, steps, T)]


def sgd(p):
    return torch.optim.SGD(p, lr=0.1)


def boundary(core, synthesizer=None, optimizer=sgd, rule=Bootstrap()) -> Interface:  # noqa: B008 - frozen value
    """DNI's chunk boundary: M (default: linear, zero-initialised) trained by `optimizer` onto `rule`."""
    return Interface(synthesizer if synthesizer is not None else BoundarySynthesizer.for_core(core), optimizer,
                     rule=rule)  # fmt: skip


def by_method(method: str, core, readout, optimizer, **options) -> TruncatedBPTT:
    """A trainer from the CLI's spelling of a method (`method_parts`), as `synthgrad train` builds it."""
    b, aux = method_parts(core, optimizer, method=method, **options)
    return TruncatedBPTT(core, readout, mse_step_loss, optimizer, T=3, boundary=b, aux=aux)


@pytest.mark.parametrize("kind", sorted(CORES))
@pytest.mark.parametrize(("steps", "T"), [(12, 3), (12, 4), (10, 4)])
def test_oracle_chunk_gradient_equals_full_bptt_restricted_to_the_chunk(kind, steps, T) -> None:  # noqa: N803
    """With the true future gradient at every boundary, each chunk's gradient is exactly the full-BPTT gradient
    of the whole sequence's loss through the parameters *as used at that chunk's steps*, and every bootstrapped
    target equals the true gradient at its boundary. Truncated BPTT fails the same check."""
    core, readout = make_model(kind)
    inputs, targets, mask = make_data(steps)
    oracle = StateOracle()
    oracle.table = oracle_table(core, readout, inputs, targets, mask, T)
    lib = true_future_gradients(core, readout, mse_step_loss, inputs, targets, T, mask)
    for (_, g), g_lib in zip(oracle.table, lib, strict=True):
        assert torch.allclose(g, g_lib, rtol=0, atol=TOL)
    frozen_core, frozen_readout = (
        copy.deepcopy(core).requires_grad_(False),
        copy.deepcopy(readout).requires_grad_(False),
    )
    params = [*core.parameters(), *readout.parameters()]
    synth = BoundarySynthesizer(state_shapes(core), net=oracle)
    dni = TruncatedBPTT(core, readout, mse_step_loss, sgd, T=T, boundary=boundary(core, synth))
    bptt = TruncatedBPTT(copy.deepcopy(core), copy.deepcopy(readout), mse_step_loss, sgd, T=T)
    before = [torch.zeros_like(p) for p in params]
    state = bptt_state = None
    for k, (lo, hi) in enumerate(chunks(steps, T)):
        live = range(lo, hi)
        loss, _, _, _ = reference_unroll(
            lambda t, live=live: core if t in live else frozen_core,
            lambda t, live=live: readout if t in live else frozen_readout,
            inputs, targets, mask, core.initial_state(B),
        )  # fmt: skip
        restricted = torch.autograd.grad(loss, params)
        kw = dict(mask=mask[lo:hi], last=hi == steps, accumulate=True)
        state, stats = dni.train_chunk(inputs[lo:hi], targets[lo:hi], state, **kw)
        bptt_state, _ = bptt.train_chunk(inputs[lo:hi], targets[lo:hi], bptt_state, **kw)
        after = [p.grad.clone() for p in params]
        for a, b, r in zip(after, before, restricted, strict=True):
            assert torch.allclose(a - b, r, rtol=0, atol=TOL)
        if k > 0:  # the target of the prediction at this chunk's start boundary
            assert torch.allclose(stats.target, oracle.table[k - 1][1], rtol=0, atol=TOL)
            assert stats.sg_loss < TOL
        if hi < steps:  # truncation drops the future gradient: its chunk gradient is different
            bp = [p.grad for p in [*bptt.core.parameters(), *bptt.readout.parameters()]]
            assert max((x - y).abs().max().item() for x, y in zip(bp, after, strict=True)) > 1e-6
        before = after


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("T", [3, 4])
def test_oracle_dni_training_equals_full_bptt_training(opt, T) -> None:  # noqa: N803
    """One update per sequence from the accumulated chunked gradient (oracle SG) tracks full BPTT for 4 sequences."""
    factory = {"sgd": sgd, "adam": lambda p: torch.optim.Adam(p, lr=0.05)}[opt]
    core, readout = make_model()
    ref_core, ref_readout = copy.deepcopy(core), copy.deepcopy(readout)
    ref_opt = factory([*ref_core.parameters(), *ref_readout.parameters()])
    oracle = StateOracle()
    synth = BoundarySynthesizer(state_shapes(core), net=oracle)
    trainer = TruncatedBPTT(core, readout, mse_step_loss, factory, T=T, boundary=boundary(core, synth, factory))
    for seq in range(4):
        inputs, targets, mask = make_data(12, seed=10 + seq)
        oracle.table = oracle_table(core, readout, inputs, targets, mask, T)
        trainer.train_sequence(inputs, targets, mask, accumulate=True)
        ref_opt.zero_grad()
        reference_unroll(lambda t: ref_core, lambda t: ref_readout, inputs, targets, mask, ref_core.initial_state(B))[
            0
        ].backward()
        ref_opt.step()
    moved = max(
        (p - q).abs().max().item() for p, q in zip(core.parameters(), make_model()[0].parameters(), strict=True)
    )
    assert moved > 1e-2  # the comparison is not between two untrained models
    ours, ref = [*core.parameters(), *readout.parameters()], [*ref_core.parameters(), *ref_readout.parameters()]
    for p, q in zip(ours, ref, strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it was asked to apply."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def two_chunks(method: str, *, last: bool, aux_head: bool = False, discount: float = 1.0):
    """Train chunk 1 (steps 0..2) then chunk 2 (steps 3..5) with a non-zero linear synthesizer; returns the
    trainer, chunk 2's stats, and copies of everything as it was just before chunk 2."""
    core, readout = make_model()
    inputs, targets, mask = make_data(6)
    synth = BoundarySynthesizer(state_shapes(core)).double()
    torch.manual_seed(5)
    with torch.no_grad():
        synth.net.out.weight.normal_(0, 0.3)
        synth.net.out.bias.normal_(0, 0.3)
    aux = AuxTask(nn.Linear(5, synth.state_size).double()) if aux_head else None
    tr = TruncatedBPTT(core, readout, mse_step_loss, RecordingSGD, T=3,
                       boundary=boundary(core, synth, RecordingSGD, Bootstrap(discount)), aux=aux)  # fmt: skip
    s1, _ = tr.train_chunk(inputs[:3], targets[:3], None, mask=mask[:3])
    before = copy.deepcopy(tr)
    _, stats = tr.train_chunk(inputs[3:], targets[3:], s1, mask=mask[3:], last=last)
    return tr, stats, before, s1, (inputs[3:], targets[3:], mask[3:])


def chunk_reference(before: TruncatedBPTT, s1, data, *, last: bool):
    """Chunk 2 by hand: (leaf s1, task loss L2, flattened s2, ĝ_end or None, core outputs o_t)."""
    leaf = flat(s1).clone().requires_grad_(True)
    core, readout = before.core, before.readout
    loss, _, outs, s2 = reference_unroll(lambda t: core, lambda t: readout, *data, split(leaf, s1))
    g_end = None if last else before.synthesizer(flat(s2).detach()).detach()
    return leaf, loss, flat(s2), g_end, outs


@pytest.mark.parametrize("discount", [1.0, 0.1])
@pytest.mark.parametrize("last", [False, True])
def test_bootstrapped_target_matches_formula(last, discount) -> None:
    """target = B·Σ_τ ∂L_τ/∂s_start + λ(∂s_end/∂s_start)ᵀ ĝ_end (PAPER.md §4 at λ = 1, [Note: discount]); at a
    sequence end only the first term."""
    tr, stats, before, s1, data = two_chunks("dni", last=last, discount=discount)
    leaf, loss, s2, g_end, _ = chunk_reference(before, s1, data, last=last)
    (true_part,) = torch.autograd.grad(loss, leaf, retain_graph=True)
    expected = B * true_part
    if not last:
        expected = expected + discount * torch.autograd.grad(s2, leaf, grad_outputs=g_end)[0]
        assert torch.allclose(stats.synthetic, g_end, rtol=0, atol=TOL) and g_end.abs().max() > 1e-3
    else:
        assert stats.synthetic is None
    assert torch.allclose(stats.target, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("discount", [1.0, 0.1])
@pytest.mark.parametrize("method", ["dni", "dni-aux"])
def test_synthesizer_loss_never_reaches_the_core_and_aux_loss_never_reaches_the_synthesizer(method, discount) -> None:
    """The gradients each optimizer applied at chunk 2 equal the formulas: core ← task loss + ⟨s_end, λĝ/B⟩
    (+ L_aux for DNI + Aux, whose target is ĝ itself); M ← synthesizer_loss(M(s_start), task-only target), never
    anything else."""
    tr, stats, before, s1, data = two_chunks(method, last=False, aux_head=method == "dni-aux", discount=discount)
    leaf, loss, s2, g_end, outs = chunk_reference(before, s1, data, last=False)
    objective = loss + (s2 * discount * g_end / B).sum()
    if method == "dni-aux":
        aux = sum(synthesizer_loss(before.aux_head(o), g_end) for o in outs)
        assert aux.item() > 1e-6 and stats.aux_loss == pytest.approx(aux.item(), rel=1e-9)
        objective = objective + aux
    model_params = [*before.core.parameters(), *before.readout.parameters()]
    if method == "dni-aux":
        model_params += list(before.aux_head.parameters())
    expected = torch.autograd.grad(objective, model_params, retain_graph=True)
    for got, exp in zip(tr.optimizer.seen[-1], expected, strict=True):
        assert torch.allclose(got, exp, rtol=0, atol=TOL)
    target = (
        B * torch.autograd.grad(loss + (s2 * discount * g_end / B).sum(), leaf, retain_graph=True)[0]
    )  # task + SG only
    sg = synthesizer_loss(before.synthesizer(flat(s1)), target)
    expected_synth = torch.autograd.grad(sg, list(before.synthesizer.parameters()))
    for got, exp in zip(tr.synthesizer_optimizer.seen[-1], expected_synth, strict=True):
        assert torch.allclose(got, exp, rtol=0, atol=TOL)
    if method == "dni-aux":  # the auxiliary loss did change the core's update
        plain = torch.autograd.grad(loss + (s2 * discount * g_end / B).sum(), model_params[:-2], allow_unused=True)
        diff = max((g - p).abs().max().item() for g, p in zip(tr.optimizer.seen[-1], plain, strict=False))
        assert diff > 1e-6


def test_zero_initialised_synthesizer_first_chunk_equals_truncated_bptt() -> None:
    core, readout = make_model()
    inputs, targets, mask = make_data(9)
    adam = lambda p: torch.optim.Adam(p, lr=0.05)  # noqa: E731
    runs = {m: by_method(m, copy.deepcopy(core), copy.deepcopy(readout), adam) for m in ("bptt", "dni", "dni-aux")}

    def params(tr):
        return torch.cat([p.detach().flatten() for p in [*tr.core.parameters(), *tr.readout.parameters()]])

    states = dict.fromkeys(runs)
    for k, (lo, hi) in enumerate(chunks(9, 3)):
        for m, tr in runs.items():
            states[m], stats = tr.train_chunk(inputs[lo:hi], targets[lo:hi], states[m], mask=mask[lo:hi])
            if k == 0 and m != "bptt":
                assert torch.count_nonzero(stats.synthetic) == 0
        same = [torch.equal(params(runs["bptt"]), params(tr)) for tr in (runs["dni"], runs["dni-aux"])]
        # Chunks 1 and 2 inject M's zero output (M first trains after chunk 2's backward); chunk 3 differs.
        assert all(same) == (k <= 1)
        if k == 1:
            assert torch.count_nonzero(runs["dni"].synthesizer.net.out.weight) > 0


def test_training_state_round_trip_resumes_exactly() -> None:
    inputs, targets, mask = make_data(9)
    adam = lambda p: torch.optim.Adam(p, lr=0.05)  # noqa: E731
    a = by_method("dni-aux", *make_model(), adam)
    s, _ = a.train_chunk(inputs[:3], targets[:3], mask=mask[:3])
    s, _ = a.train_chunk(inputs[3:6], targets[3:6], s, mask=mask[3:6])
    b = by_method("dni-aux", *make_model(seed=7), adam)
    b.load_training_state(copy.deepcopy(a.training_state()))
    _, sa = a.train_chunk(inputs[6:], targets[6:], s, mask=mask[6:], last=True)
    _, sb = b.train_chunk(inputs[6:], targets[6:], s, mask=mask[6:], last=True)
    assert sa.loss == sb.loss and torch.equal(sa.target, sb.target)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("method", ["bptt", "dni"])
def test_a_chunk_without_signal_leaves_the_weights_alone(method) -> None:
    """[Note: a chunk without signal]: a fully masked chunk under truncated BPTT has a zero gradient, and Adam must
    not take an (echo) step on it; under DNI the synthetic gradient at its end is a signal and the core steps."""
    core, readout = make_model()
    inputs, targets, mask = make_data(6)
    adam = lambda p: torch.optim.Adam(p, lr=0.05)  # noqa: E731
    tr = by_method(method, core, readout, adam)
    state, _ = tr.train_chunk(inputs[:3], targets[:3], mask=torch.ones_like(mask[:3]))  # a real step
    if method == "dni":
        nn.init.normal_(tr.synthesizer.net.out.weight)  # a non-zero ĝ at the end of the next chunk
    params = tr.optimizer.param_groups[0]["params"]
    before = [p.detach().clone() for p in params]
    steps = [s["step"].item() for s in tr.optimizer.state.values()]
    tr.train_chunk(inputs[3:], targets[3:], state, mask=torch.zeros_like(mask[3:]))
    unchanged = all(torch.equal(b, a) for b, a in zip(before, params, strict=True))
    assert unchanged == (method == "bptt")
    assert ([s["step"].item() for s in tr.optimizer.state.values()] == steps) == (method == "bptt")


def test_lstm_forget_bias_shifts_only_the_forget_gates_bias_at_init() -> None:
    """LSTMCore(forget_bias=b) is PyTorch's init (same draws) with b added to the forget rows of one bias, so
    the forget gates of a zero state start at σ(b ± PyTorch's small biases)."""
    torch.manual_seed(0)
    plain = LSTMCore(4, 6)
    torch.manual_seed(0)
    shifted = LSTMCore(4, 6, forget_bias=2.0)
    delta = {name: shifted.state_dict()[name] - p for name, p in plain.state_dict().items()}
    expected = torch.tensor([0.0] * 6 + [2.0] * 6 + [0.0] * 12)
    assert torch.allclose(delta["cell.bias_ih"], expected, rtol=0, atol=1e-6)
    assert all(torch.all(d == 0) for name, d in delta.items() if name != "cell.bias_ih")
    x, state = torch.zeros(3, 4), shifted.initial_state(3)
    f = torch.sigmoid(shifted._gate(x, state[0], 1))
    spread = 2 / 6**0.5  # two biases, each U(±1/√H)
    assert torch.all((f > torch.sigmoid(torch.tensor(2 - spread))) & (f < torch.sigmoid(torch.tensor(2 + spread))))
