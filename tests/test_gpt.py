"""The small GPT: its shape, causality and errors; cut by `decouple`, an oracle synthesizer makes it backprop, and
DNI and cDNI train it with token-wise synthesizers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthgrad.decoupled import decouple
from synthgrad.errors import ConfigError
from synthgrad.models import GPTConfig, PositionKind, gpt, lm_loss, sample
from synthgrad.models.gpt import Block, Embedding, Head
from synthgrad.optim import adam
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec, TokenSynthesizer

V = 7


def tiny(positions: str = "learned", **kwargs: object) -> nn.Sequential:
    torch.manual_seed(0)
    config = {"layers": 2, "width": 8, "heads": 2, "context": 6, "positions": positions, **kwargs}
    return gpt(GPTConfig(V, **config)).double()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_gpt_is_embedding_blocks_head(positions: str) -> None:
    model = gpt(GPTConfig(V, layers=3, width=16, heads=4, context=10, positions=positions))
    kinds = [type(m) for m in model]
    assert kinds == [Embedding, Block, Block, Block, Head]
    x = torch.randint(0, V, (2, 10))
    assert model[0](x).shape == (2, 10, 16) and model(x).shape == (2, 10, V)
    assert model(x[:, :4]).shape == (2, 4, V)  # shorter windows are fine
    assert (model[0].position is None) == (positions == "rotary")
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    model.train()
    assert torch.equal(model(x), model(x))  # deterministic in training mode: no dropout by default


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_gpt_is_causal(positions: str) -> None:
    """Changing token t + 1 leaves the logits at 0 … t unchanged, and changes those at t + 1 (the test can fail)."""
    model = tiny(positions)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (3, 6), generator=gen)
    for t in range(5):
        x2 = x.clone()
        x2[:, t + 1] = (x2[:, t + 1] + 1) % V
        a, b = model(x), model(x2)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1])
        assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-6


def test_order_is_seen() -> None:
    """Attention without positions is a function of the set of earlier tokens: the prediction after [1, 2, 4]
    would equal the one after [2, 1, 4]. Either kind of position tells them apart (the causality test above
    would pass for a model that ignores order)."""
    for positions in ("learned", "rotary"):
        model = tiny(positions)
        a, b = model(torch.tensor([[1, 2, 4]])), model(torch.tensor([[2, 1, 4]]))
        assert (a[0, 2] - b[0, 2]).abs().max() > 1e-6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 10, "heads": 4}, "width 10 is not divisible by heads 4"),
        ({"context": 0}, "context must be an integer >= 1, got 0"),
        ({"layers": 0}, "layers must be an integer >= 1, got 0"),
        ({"heads": -2}, "heads must be an integer >= 1, got -2"),
        ({"width": 2.5}, "width must be an integer >= 1, got 2.5"),
        ({"positions": "absolute"}, "positions must be one of learned, rotary, got 'absolute'"),
        ({"width": 12, "heads": 4, "positions": "rotary"}, "rotary positions need an even head width, got 12 / 4"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"vocab_size": 0}, "vocab_size must be an integer >= 1, got 0"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_value(kwargs: dict, match: str) -> None:
    kwargs = {"vocab_size": V, **kwargs}
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**kwargs)


def test_bad_input() -> None:
    model = tiny()
    with pytest.raises(ConfigError, match="7 tokens is longer than the model's context 6"):
        model(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="expected"):
        lm_loss(torch.zeros(2, 6, V), torch.zeros(2, 5, dtype=torch.long))
    assert GPTConfig(V, positions=PositionKind.ROTARY).positions is PositionKind.ROTARY


def test_lm_loss_is_the_mean_over_all_tokens() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 4, V, dtype=torch.float64), torch.randint(0, V, (3, 4))
    by_hand = sum(-torch.log_softmax(logits[b, t], -1)[targets[b, t]] for b in range(3) for t in range(4)) / 12
    assert lm_loss(logits, targets).item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_sample_extends_the_prompt_within_the_context() -> None:
    model = tiny()
    prompt = torch.tensor([[1, 2, 3]])
    out = sample(model, prompt, 9, context=6, temperature=0)
    assert out.shape == (1, 12) and torch.equal(out[:, :3], prompt)
    assert torch.equal(out, sample(model, prompt, 9, context=6, temperature=0))
    gen = torch.Generator().manual_seed(0)
    drawn = sample(model, prompt, 9, context=6, generator=gen)
    assert drawn.shape == (1, 12) and int(drawn.max()) < V
    assert model.training  # left as it was


# ---------------------------------------------------------------------------------------------- oracle = backprop
def true_per_token_grads(stages: nn.ModuleList, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Independent reference: u_{b,t} = Σ_{t'} ∂ℓ_{b,t'}/∂h_{b,t} at every cut, by backprop of the *sum* of the
    token losses through a copy of the chain ([Note: SG units for tokens]): no batch or token mean anywhere."""
    blocks = [copy.deepcopy(s.block) for s in stages]  # (the stages hold graphs in flight, which do not copy)
    h, cuts = x, []
    for m in blocks[:-1]:
        h = m(h)
        h.retain_grad()
        cuts.append(h)
    logits = blocks[-1](h)
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").backward()
    return [c.grad for c in cuts]


def run_equivalence(spec: SynthesizerSpec, positions: str, *, fold: bool, scale: float = 1.0) -> float:
    """Train a tiny GPT cut after every child with token-wise synthesizers whose per-token map is replaced by the
    true per-token gradient (×`scale`), against plain backprop; returns the largest weight difference."""
    model = tiny(positions)
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    x0 = torch.randint(0, V, (2, 6))
    net = decouple(copy.deepcopy(model), x0, loss_fn=lm_loss, synthesizer=spec, context_dim=V, lr=1e-2,
                   fold_every=int(fold))  # fmt: skip
    oracles: list[torch.Tensor] = []
    for i, synth in enumerate(net.synthesizers):
        assert isinstance(synth, TokenSynthesizer) and synth.out_shape == (6, 8)
        synth.per_token = lambda source, context=None, i=i: oracles[i] * scale  # type: ignore[method-assign]
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randint(0, V, (4, 6), generator=gen), torch.randint(0, V, (4, 6), generator=gen)
        oracles[:] = true_per_token_grads(net.stages, x, y)
        net.train_step(x, y, F.one_hot(y, V).double())  # cDNI's context per position; the oracle ignores it
        ref_opt.zero_grad()
        lm_loss(reference(x), y).backward()
        ref_opt.step()
    ref_state = reference.state_dict()
    dni_state = {}
    for i, stage in enumerate(net.stages):
        dni_state.update({f"{i}.{k}": v for k, v in stage.block.state_dict().items()})
    assert ref_state.keys() == dni_state.keys()
    return max((ref_state[k] - dni_state[k]).abs().max().item() for k in ref_state)


SPECS = [
    SynthesizerSpec(SynthesizerKind.TOKEN_LINEAR),
    SynthesizerSpec(SynthesizerKind.TOKEN_LOWRANK, (3,)),
    SynthesizerSpec(SynthesizerKind.TOKEN_MLP, (4,), positions=True),
    SynthesizerSpec(),
]


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind.value + ("+pos" if s.positions else ""))
def test_oracle_token_synthesizer_makes_the_cut_gpt_backprop(spec: SynthesizerSpec, positions: str, fold: bool) -> None:
    """The per-token quantity, reported in the chain's units by the token-wise synthesizer, is the gradient:
    with it the decoupled GPT takes backprop's steps (float64), bootstrapped or folding."""
    assert run_equivalence(spec, positions, fold=fold) <= 1e-10


def test_oracle_in_the_wrong_units_is_not_backprop() -> None:
    """The test above can fail: a per-token map off by a factor T (the chain's units mistaken for per-token
    ones) takes other steps."""
    assert run_equivalence(SynthesizerSpec(), "learned", fold=False, scale=1 / 6) > 1e-4


# ---------------------------------------------------------------------------------------------- DNI and cDNI train
def cyclic_batch(gen: torch.Generator, b: int = 16, t: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of the map k -> (3k + 1) mod V from random starts: inputs and targets (B, T)."""
    seq = [torch.randint(0, V, (b,), generator=gen)]
    for _ in range(t):
        seq.append((3 * seq[-1] + 1) % V)
    ids = torch.stack(seq, 1)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("kind", [SynthesizerKind.TOKEN_LINEAR, SynthesizerKind.TOKEN_LOWRANK, None])
@pytest.mark.parametrize("method", ["dni", "cdni"])
def test_dni_and_cdni_train_a_cut_gpt(kind: SynthesizerKind | None, method: str) -> None:
    """DNI (folding in every 2nd batch's true gradient) and cDNI (bootstrapped; context per position = the
    one-hot of its target token) train a GPT cut into two stages, [embedding, block] | [block, head], with
    token-wise synthesizers: the loss falls, and the lower stage, which sees its gradients late or synthetic,
    moves."""
    torch.manual_seed(0)
    model = gpt(GPTConfig(V, layers=2, width=16, heads=2, context=12))
    spec = SynthesizerSpec() if kind is None else SynthesizerSpec(kind, (4,))
    cdni = method == "cdni"
    gen = torch.Generator().manual_seed(0)
    x0, _ = cyclic_batch(gen)
    net = decouple(model, x0, loss_fn=lm_loss, synthesizer=spec, context_dim=V if cdni else 0, cuts=[1], lr=1e-3,
                   synthesizer_optimizer=adam(1e-3), fold_every=0 if cdni else 2)  # fmt: skip
    assert isinstance(net.synthesizers[0], TokenSynthesizer)
    lower = copy.deepcopy(net.stages[0].block.state_dict())
    losses, sg = [], []
    for step in range(60):
        x, y = cyclic_batch(gen)
        stats = net.train_step(x, y, F.one_hot(y, V).float() if cdni else None, diagnose=step == 59)
        losses.append(stats.loss)
        sg += [v for v in stats.sg_loss if not math.isnan(v)]  # folding: NaN on steps that received nothing
    assert sum(losses[-5:]) / 5 < 0.85 * losses[0]
    assert losses[0] == pytest.approx(math.log(V), abs=0.05)  # it starts from chance
    moved = max((lower[k] - v).abs().max().item() for k, v in net.stages[0].block.state_dict().items())
    assert moved > 1e-2
    assert len(sg) >= 30 and all(math.isfinite(v) for v in sg)
    if cdni:  # the context makes ĝ informative (0.37–0.50 here); DNI without it predicts E[g | h], near 0 (~0.05)
        assert stats.true_cosine[0] > 0.25
