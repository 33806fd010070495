"""The anti-causal attention token synthesizer (`TokenAttentionSynthesizer`, kind token-attention; [Note:
anti-causal synthesizer] in synthgrad/synthesizers/tokens.py): units, zero start, what it sees (positions t' ≥ t,
never t' < t), its context forms, its cost, that it learns a sum over later positions a token-wise map cannot,
and the kind through the config, `synthgrad train --model gpt` and the pipelined stages. Every test is small
(the whole file runs in a few seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from helpers import checkpoint_of, run_cli
from synthgrad.config import Method, TrainConfig, from_dict
from synthgrad.core import synthesizer_loss
from synthgrad.decoupled import infer_shapes
from synthgrad.errors import ConfigError
from synthgrad.models import GPTConfig, block_multiply_adds
from synthgrad.parallel.config import ParallelConfig
from synthgrad.parallel.partition import cuts_of, split_layers
from synthgrad.pipeline import LocalExecutor
from synthgrad.schedule import DecoupledSchedule
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec, TokenAttentionSynthesizer
from synthgrad.training import batch_order, build_network
from synthgrad.training.lm import load_lm
from test_lm import TINY, B, one_line_error, steps, write_small_ptb
from test_lm import T as TINY_T
from test_tokenwise import contexts, randomise_

T, D, V, R = 6, 8, 5, 3
ATTENTION = SynthesizerKind.TOKEN_ATTENTION
REPO = Path(__file__).resolve().parents[1]


def attention(context_dim: int = 0, positions: bool = False, seed: int = 0, **kwargs: object) -> nn.Module:
    """A float64 attention synthesizer with every parameter random (the zero-initialised `out` too)."""
    torch.manual_seed(seed)
    spec = SynthesizerSpec(ATTENTION, (R,), positions=positions)
    return randomise_(spec.build((T, D), context_dim=context_dim, **kwargs)).double()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the synthesizer
def test_shapes_and_units() -> None:
    """ĝ = û / T ([Note: SG units for tokens]), (B, T, D'); the spec's rank, or D/8 from the spec's default."""
    synth = attention(V)
    assert isinstance(synth, TokenAttentionSynthesizer) and synth.rank == R
    h, ids = torch.randn(4, T, D, dtype=torch.float64), torch.randint(0, V, (4, T))
    u_hat = synth.per_token(h, ids)
    assert u_hat.shape == (4, T, D) and torch.allclose(synth(h, ids), u_hat / T, atol=1e-15, rtol=0)
    assert synth(h[:, :4], ids[:, :4]).shape == (4, 4, D)  # a shorter window
    other = SynthesizerSpec(ATTENTION, (R,)).build((T, D), (T, 3))
    assert other(torch.randn(2, T, D)).shape == (2, T, 3)
    assert SynthesizerSpec(ATTENTION).build((T, 64)).rank == 8  # the field's default hidden: r = D/8
    with pytest.raises(ValueError, match="one width"):
        SynthesizerSpec(ATTENTION, (4, 4)).build((T, D))
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        SynthesizerSpec(ATTENTION, (R,)).build((D,))  # a flat cut
    with pytest.raises(ValueError, match=r"\(T, D'\)"):
        TokenAttentionSynthesizer((T, D), (T + 1, D), rank=R)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        synth(torch.randn(4, T, D + 1, dtype=torch.float64), ids)


@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("context_dim", [0, V])
def test_starts_at_exactly_zero(context_dim: int, positions: bool) -> None:
    torch.manual_seed(0)
    synth = SynthesizerSpec(ATTENTION, (R,), positions=positions).build((T, D), context_dim=context_dim)
    assert all(torch.count_nonzero(p) == 0 for p in synth.out.parameters())  # weight, bias, context weight
    h = torch.randn(3, T, D) * 100
    ctx = contexts(3, T, V, torch.Generator().manual_seed(0))[0] if context_dim else None
    out = synth(h, ctx)
    assert out.shape == (3, T, D) and torch.count_nonzero(out) == 0
    synthesizer_loss(out, torch.ones_like(out)).backward()  # ...and it is not stuck there
    assert synth.out.bias.grad.abs().sum() > 0 and synth.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("positions", [False, True], ids=["mask", "distance-bias"])
def test_position_t_sees_t_and_later_never_earlier(positions: bool) -> None:
    """Perturbing h (or the cDNI context) at s leaves û_t for t > s exactly unchanged, and changes û_t for t ≤ s:
    anti-causal, the mirror of the model's own attention."""
    synth = attention(V, positions)
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(2, T, D, generator=gen, dtype=torch.float64)
    ids = contexts(2, T, V, gen)[0]
    base = synth.per_token(h, ids)
    for s in range(T):
        h2 = h.clone()
        h2[:, s] += torch.randn(2, D, generator=gen, dtype=torch.float64)
        ids2 = ids.clone()
        ids2[:, s] = (ids2[:, s] + 1) % V
        for moved in (synth.per_token(h2, ids), synth.per_token(h, ids2)):
            assert torch.equal(moved[:, s + 1 :], base[:, s + 1 :]), s  # t > s: s is before t, unseen
            change = (moved - base)[:, : s + 1].abs().amax(dim=(0, 2))  # t ≤ s
            assert (change > 1e-6).all(), (s, change)


def test_token_wise_synthesizers_do_not_see_later_positions_either() -> None:
    """The contrast the kind exists for: a token-wise map's û_t moves only with h_t."""
    torch.manual_seed(0)
    token = randomise_(SynthesizerSpec(SynthesizerKind.TOKEN_MLP, (7,), batch_norm=False).build((T, D))).double()
    h = torch.randn(2, T, D, dtype=torch.float64)
    h2 = h.clone()
    h2[:, -1] += 1.0
    assert torch.equal(token.per_token(h2)[:, :-1], token.per_token(h)[:, :-1])
    assert not torch.allclose(attention().per_token(h2)[:, :-1], attention().per_token(h)[:, :-1])


def test_context_as_ids_one_hots_or_per_sequence_is_the_same_map() -> None:
    synth = attention(V)
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(3, T, D, generator=gen, dtype=torch.float64)
    ids, one_hot = contexts(3, T, V, gen)
    assert torch.allclose(synth(h, ids), synth(h, one_hot.double()), atol=1e-12, rtol=0)
    per_sequence = one_hot[:, 0].double()  # (B, V): one context for every position
    assert torch.allclose(synth(h, per_sequence), synth(h, per_sequence[:, None].expand(3, T, V)), atol=1e-12)
    assert not torch.allclose(synth(h, ids), synth(h, (ids + 1) % V))  # the context is read
    with pytest.raises(ValueError, match="context"):
        synth(h, one_hot[:, :, :2])
    with pytest.raises(ValueError, match="context"):
        synth(h)


def test_distance_biases_are_read_and_bound_the_window() -> None:
    synth = attention(positions=True)
    h = torch.randn(2, T, D, dtype=torch.float64)
    before = synth(h)
    with torch.no_grad():
        synth.distance_bias[1] += 3.0  # favour the next position
    assert not torch.allclose(synth(h), before)
    assert torch.equal(synth(h)[:, -1], before[:, -1])  # the last position has no next one
    with pytest.raises(ValueError, match="positions"):
        synth(torch.randn(2, T + 1, D, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- cost
@pytest.mark.parametrize("dense", [False, True], ids=["ids", "one-hot"])
def test_multiply_adds_by_hand(dense: bool) -> None:
    """4·D·r (q, k, z, v) + 2·T·r (all T scores and weighted values per position) + r·D' (out), plus 2·V·r + V·D'
    for a one-hot float context; torch's flop counter agrees (it sees the masked attention's two batched products
    on the CPU; a fused kernel it cannot see would leave out exactly the 2·T·r)."""
    d_out = 4
    synth = SynthesizerSpec(ATTENTION, (R,)).build((T, D), (T, d_out), context_dim=V)
    by_hand = 4 * D * R + 2 * T * R + R * d_out + (2 * V * R + V * d_out if dense else 0)
    assert synth.multiply_adds(dense_context=dense) == by_hand == (194 if dense else 144)
    assert synth.multiply_adds(dense_context=dense, tokens=2 * T) == by_hand + 2 * T * R
    ids = torch.randint(0, V, (2, T))
    with FlopCounterMode(display=False) as counter:
        synth(torch.randn(2, T, D), F.one_hot(ids, V).float() if dense else ids)
    measured = counter.get_total_flops() / 2 / 2 / T  # multiply-adds per position
    assert measured in (by_hand, by_hand - 2 * T * R), measured


@pytest.mark.parametrize("method", ["dni", "cdni"])
def test_costs_at_most_a_tenth_of_a_block_at_the_gpt_defaults(method: str) -> None:
    """At the CLI's GPT (D = 64, T = 64, 4 heads, V = 50 characters, r = D/8 = 8): 3,584 multiply-adds per
    position with ids (what the CLI passes) or no context, 6.25 % of a block's 57,344; with one-hot floats 7,584."""
    cfg = from_dict({"model": "gpt", "method": method, "synthesizer": "token-attention"}).validate().resolve()
    assert cfg.synthesizer_hidden == (8,) and (cfg.width, cfg.context) == (64, 64)
    synth = cfg.synthesizer_spec().build((cfg.context, cfg.width), context_dim=50 if method == "cdni" else 0)
    block = block_multiply_adds(GPTConfig(50, width=cfg.width, heads=cfg.heads, context=cfg.context))
    assert (synth.multiply_adds(dense_context=False), block) == (3584, 57344)
    assert synth.multiply_adds(dense_context=False) / block == 0.0625 <= 0.10
    assert synth.multiply_adds(dense_context=method == "cdni") == (7584 if method == "cdni" else 3584)


# ---------------------------------------------------------------------------------------------- what it can learn
def test_learns_a_sum_over_later_positions_that_a_token_wise_map_cannot() -> None:
    """Targets u_t = Σ_{t' ≥ t} A h_{t'} (h Gaussian, A fixed): a token-wise map can predict A h_t at best, a
    relative error of E‖Σ_{t' > t} A h_{t'}‖² / E‖u_t‖² = 3.5 / 4.5 = 0.78 at T = 8; after 300 Adam steps the
    attention synthesizer is below 0.4 (about 0.3: its softmax averages the later positions, a sum is matched
    only in scale), under half the token-wise error."""
    t = d = 8

    def batch(gen: torch.Generator, b: int, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.randn(b, t, d, generator=gen)
        return h, (h @ a.T).flip(1).cumsum(1).flip(1)  # Σ over t' ≥ t

    def relative_error(spec: SynthesizerSpec) -> float:
        torch.manual_seed(0)
        synth = spec.build((t, d))
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(d, d, generator=gen) / d**0.5
        optimizer = torch.optim.Adam(synth.parameters(), lr=1e-2)
        for _ in range(300):
            h, u = batch(gen, 32, a)
            loss = (synth.per_token(h) - u).square().sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        h, u = batch(torch.Generator().manual_seed(1), 512, a)
        with torch.no_grad():
            return ((synth.per_token(h) - u).square().sum() / u.square().sum()).item()

    linear = relative_error(SynthesizerSpec(SynthesizerKind.TOKEN_LINEAR))
    mlp = relative_error(SynthesizerSpec(SynthesizerKind.TOKEN_MLP, (32,), batch_norm=False))
    attended = relative_error(SynthesizerSpec(ATTENTION, (8,)))
    assert linear > 0.7 and mlp > 0.7  # the token-wise bound, 0.78
    assert attended < 0.4 and attended < 0.5 * min(linear, mlp), (attended, linear, mlp)


# ---------------------------------------------------------------------------------------------- config and CLI
def test_the_default_recipes_and_the_kind_chosen_by_name() -> None:
    """[Note: GPT recipe] in config.py: both methods a token MLP of width/4, folding every batch, lr 1e-3."""
    dni = from_dict({"model": "gpt", "method": "dni"}).validate().resolve()
    cdni = from_dict({"model": "gpt", "method": "cdni"}).validate().resolve()
    for recipe in (dni, cdni):
        assert (recipe.synthesizer, recipe.synthesizer_hidden) == (SynthesizerKind.TOKEN_MLP, (16,))
        assert (recipe.fold_every, recipe.lr, recipe.synthesizer_lr, recipe.beta1) == (1, 1e-3, 1e-4, 0.9)
    cfg = from_dict({"model": "gpt", "method": "cdni", "synthesizer": "token-attention", "width": 32})
    cfg = cfg.validate().resolve()
    assert cfg.synthesizer is ATTENTION and cfg.synthesizer_hidden == (4,) and not cfg.synthesizer_spec().batch_norm
    assert (cfg.fold_every, cfg.lr, cfg.synthesizer_lr) == (cdni.fold_every, cdni.lr, cdni.synthesizer_lr)
    rank = from_dict({"model": "gpt", "method": "dni", "synthesizer": "token-attention", "synthesizer_hidden": [5]})
    assert rank.validate().resolve().synthesizer_spec().build((T, D)).rank == 5
    two = {"model": "gpt", "method": "dni", "synthesizer": "token-attention", "synthesizer_hidden": [4, 4]}
    with pytest.raises(ConfigError, match="token-attention takes one width, its rank: got --synthesizer-hidden 4,4"):
        from_dict(two).validate()
    with pytest.raises(ConfigError, match="--synthesizer token-attention reads"):
        TrainConfig(method=Method.DNI, synthesizer=ATTENTION).validate()  # an FCN's flat cuts


@pytest.fixture(scope="module")
def ptb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_ptb(tmp_path_factory.mktemp("small_ptb_attention"))


@pytest.mark.parametrize("method", ["dni", "cdni"])
def test_cli_trains_a_tiny_gpt_with_it(capfd, tmp_path, ptb, method) -> None:
    out = tmp_path / method
    code, stdout, err = run_cli(capfd, "train", *TINY, "--data-dir", ptb, "--out", out, "--method", method,
                                "--synthesizer", "token-attention", "--max-tokens", steps(3))  # fmt: skip
    assert code == 0, err
    assert stdout.startswith(f"{method}: valid ")
    config = json.loads((out / "config.json").read_text())
    assert config["synthesizer"] == "token-attention" and config["synthesizer_hidden"] == [2]  # width 16 / 8
    job = checkpoint_of(out)[1]["job"]
    synthesizer = {k: v for k, v in json_free(job).items() if "query_key" in k}
    assert synthesizer and all(torch.isfinite(v).all() for v in synthesizer.values())


def json_free(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint state, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    return {k: v for key, sub in items for k, v in json_free(sub, f"{prefix}.{key}").items()}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "fcn"], ["--synthesizer token-attention reads (T, D) token activations: use it with --model gpt"]),
        ([*TINY, "--synthesizer-hidden", "4,4"], ["token-attention takes one width, its rank"]),
        ([*TINY, "--method", "backprop"], ["--synthesizer", "need --method dni or cdni"]),
    ],
    ids=["flat-cut", "two-widths", "backprop"],
)
def test_bad_combinations_are_one_line_exit_2(capfd, tmp_path, ptb, args, needles) -> None:
    code, _, err = run_cli(capfd, "train", "--method", "dni", "--synthesizer", "token-attention", "--data-dir", ptb,
                           "--out", tmp_path / "bad", *args)  # fmt: skip
    one_line_error(code, err, *needles)
    assert not (tmp_path / "bad").exists()


def test_pipelined_stages_build_and_train_it_through_the_same_spec(ptb) -> None:
    """`synthgrad parallel`'s workers build their stages with `build_network` from the same config; here the
    in-process executor of that schedule (one step of staleness) ticks a tiny cDNI GPT with the kind."""
    torch.set_num_threads(1)
    cfg = TrainConfig(dataset="ptb-char", model="gpt", data_dir=str(ptb), layers=2, width=16, heads=2,
                      context=TINY_T, batch_size=B, seed=1, method=Method.CDNI, synthesizer=ATTENTION,
                      modules=2).validate().resolve()  # fmt: skip
    assert ParallelConfig(cfg, stages=2).validate().resolve().train.synthesizer is ATTENTION
    task = load_lm(cfg).task(conditioned=True)
    net = build_network(cfg, task.input_shape, task.num_classes, cuts=cuts_of(split_layers(cfg.model_layers, 2)))
    synth = net.synthesizers[0]
    assert isinstance(synth, TokenAttentionSynthesizer) and synth.context_dim == task.num_classes
    executor = LocalExecutor(list(net.stages), DecoupledSchedule(2, 1, net.rule, unlock=False),
                             infer_shapes(net.blocks, task.example), task.input_shape)  # fmt: skip
    order = batch_order(1, 1, len(task.train_y))
    for step in range(3):
        executor.tick(*task.batch(order[step * B : (step + 1) * B]))
    assert synth.out.weight.abs().sum() > 0  # it received targets and was updated


@pytest.mark.slow
def test_synthgrad_parallel_runs_it(ptb, tmp_path) -> None:
    """The real two-process pipeline (about 10 s: behind --runslow)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "synthgrad.cli", "parallel", "--stages", "2", *TINY, "--data-dir", str(ptb),
           "--out", str(tmp_path / "p"), "--max-tokens", steps(4), "--method", "dni", "--synthesizer",
           "token-attention"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "p" / "config.json").read_text())["synthesizer"] == "token-attention"
