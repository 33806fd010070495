"""The set-up probes of issue #20 (`--cell`, `--init`, `--optimizer`, `--clip`, `--item-bits`): each does what it
says, the defaults are today's set-up bit for bit, bad values are one line and exit 2, and the probe runner
(benchmarks/recurrent_probes.py) writes its table. Tiny sizes, one thread: a few seconds in all."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import run_cli, same_tensors, summary_and_rows
from synthgrad.recurrent import RecurrentConfig, RecurrentMethod, RecurrentTask
from synthgrad.recurrent.cells import CellKind, LSTMCore, LSTMInit, PeepholeLSTMCore, make_core
from synthgrad.recurrent.copy_loop import CopySetup
from synthgrad.recurrent.runner import IMPLIED, RESUMABLE
from synthgrad.recurrent.task_config import RecurrentOptimizer
from synthgrad.training.run_folder import RunFolder, resume_mismatch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden-size", "8", "--batch-size", "4", "--threads", "1", "--no-progress", "--seed", "3"]
DEFAULTS = ["--cell", "lstm", "--init", "torch", "--optimizer", "adam", "--clip", "0", "--item-bits", "8"]
PROBE_FLAGS = ["--cell", "peephole", "--init", "uniform", "--optimizer", "rmsprop", "--clip", "0.5", "--item-bits", "3"]


def graves_2013(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, core: PeepholeLSTMCore) -> tuple:
    """One step of Graves (2013) eq. 7–11, written out gate by gate in float64 from `core`'s weights."""
    H = core.hidden_size  # noqa: N806
    W_x, W_h = core.cell.weight_ih.double(), core.cell.weight_hh.double()  # noqa: N806 - rows i, f, g, o
    b = (core.cell.bias_ih + core.cell.bias_hh).double()
    w_ci, w_cf, w_co = core.peephole.double()

    def part(k: int) -> torch.Tensor:
        rows = slice(k * H, (k + 1) * H)
        return x @ W_x[rows].T + h @ W_h[rows].T + b[rows]

    i = torch.sigmoid(part(0) + w_ci * c)
    f = torch.sigmoid(part(1) + w_cf * c)
    c_t = f * c + i * torch.tanh(part(2))
    o = torch.sigmoid(part(3) + w_co * c_t)
    return o * torch.tanh(c_t), c_t


def tiny_peephole(peephole_scale: float = 0.5) -> PeepholeLSTMCore:
    torch.manual_seed(0)
    core = PeepholeLSTMCore(3, 5)
    with torch.no_grad():
        core.peephole.copy_(peephole_scale * torch.randn(3, 5))  # large enough to matter
    return core


# -- the peephole cell -------------------------------------------------------------------------------------------


def test_the_peephole_cell_is_graves_2013_step_by_step() -> None:
    core = tiny_peephole()
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(4, 2, 3, generator=g)
    state = (0.5 * torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g))
    h, c = (s.double() for s in state)
    with torch.no_grad():
        for x in xs:
            out, state = core.step(x, state)
            h, c = graves_2013(x.double(), h, c, core)
            assert torch.allclose(out.double(), h, atol=1e-6) and out is state[0]
            assert torch.allclose(state[0].double(), h, atol=1e-6) and torch.allclose(state[1].double(), c, atol=1e-6)
    assert [s.shape for s in core.initial_state(2)] == [(2, 5), (2, 5)]  # (h, c), as LSTMCore's


def test_the_peephole_cell_without_peepholes_is_nn_lstmcell() -> None:
    core = tiny_peephole(0.0).double()
    ref = nn.LSTMCell(3, 5).double()
    ref.load_state_dict(core.cell.state_dict())
    g = torch.Generator().manual_seed(2)
    state = tuple(torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(2))
    ref_state = state
    with torch.no_grad():
        for x in torch.randn(5, 2, 3, generator=g, dtype=torch.float64):
            _, state = core.step(x, state)
            ref_state = ref(x, ref_state)
            assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(state, ref_state, strict=True))


def test_the_peephole_cells_trace_jacobian_is_its_exact_cell_path() -> None:
    """∂(h_t, c_t)/∂c_{t-1} at fixed h_{t-1} is diagonal; autograd gives it, the cell's trace Jacobian must agree
    (the peepholes add terms to both entries). Without peepholes it is LSTMCore's."""
    core = tiny_peephole().double()
    g = torch.Generator().manual_seed(3)
    x, h = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    c = torch.randn(2, 5, generator=g, dtype=torch.float64).requires_grad_()
    _, (h_t, c_t) = core.step(x, (h, c))
    d_h, d_c = (torch.autograd.grad(v.sum(), c, retain_graph=True)[0] for v in (h_t, c_t))
    path = core.trace_jacobian(x, (h, c.detach()), (h_t.detach(), c_t.detach()))
    assert torch.allclose(path.forget, d_c, atol=1e-10) and torch.allclose(path.readout, d_h, atol=1e-10)
    plain = LSTMCore(3, 5).double()
    plain.cell.load_state_dict(core.cell.state_dict())
    with torch.no_grad():
        core.peephole.zero_()
        nxt = core.step(x, (h, c.detach()))[1]
        a, b = core.trace_jacobian(x, (h, c.detach()), nxt), plain.trace_jacobian(x, (h, c.detach()), nxt)
    assert torch.allclose(a.forget, b.forget) and torch.allclose(a.readout, b.readout)


def test_forget_bias_reaches_the_peephole_cell() -> None:
    torch.manual_seed(4)
    base = PeepholeLSTMCore(3, 6)
    torch.manual_seed(4)
    shifted = PeepholeLSTMCore(3, 6, forget_bias=2.0)
    diff = shifted.cell.bias_ih - base.cell.bias_ih
    assert torch.allclose(diff, torch.tensor([0.0] * 6 + [2.0] * 6 + [0.0] * 12))
    assert torch.equal(shifted.peephole, base.peephole)


# -- initialisation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CellKind))
def test_each_init_does_what_it_says(cell: CellKind) -> None:
    H = 16  # noqa: N806
    torch.manual_seed(5)
    default = make_core(cell, 9, H)
    torch.manual_seed(5)
    uniform = make_core(cell, 9, H, init="uniform")
    torch.manual_seed(5)
    orthogonal = make_core(cell, 9, H, init=LSTMInit.ORTHOGONAL)
    # torch: PyTorch's U(±1/√H) for every parameter (peepholes too)
    assert all(p.abs().max() <= 1 / math.sqrt(H) for p in default.parameters())
    # uniform: every LSTM weight and bias in ±0.1, and spread over that range (not PyTorch's ±0.25)
    for name, p in uniform.named_parameters():
        assert p.abs().max() <= 0.1 and p.abs().max() > 0.09, name
    # orthogonal: each gate's H×H recurrent block W has W Wᵀ = I; everything else is PyTorch's draw
    for k in range(4):
        w = orthogonal.cell.weight_hh[k * H : (k + 1) * H].detach().double()
        assert torch.allclose(w @ w.T, torch.eye(H, dtype=torch.float64), atol=1e-5), k
    for name, p in orthogonal.named_parameters():
        if name != "cell.weight_hh":
            assert torch.equal(p, dict(default.named_parameters())[name]), name
    # the forget bias is added after the init
    torch.manual_seed(5)
    biased = make_core(cell, 9, H, init="uniform", forget_bias=3.0)
    assert torch.equal(biased.cell.bias_ih[H : 2 * H], uniform.cell.bias_ih[H : 2 * H] + 3.0)


def test_the_default_core_is_todays_lstm_draw_for_draw() -> None:
    """No --cell / --init: an `LSTMCore` whose weights are the `nn.LSTMCell` PyTorch draws at the seed, with the
    parameter names of every committed checkpoint."""
    torch.manual_seed(6)
    ref = nn.LSTMCell(9, 8)
    cfg = RecurrentConfig(task=RecurrentTask.COPY, hidden_size=8, max_samples=1, seed=6).validate().resolve()
    core = CopySetup(cfg, None).trainer.core
    assert type(core) is LSTMCore
    assert {k: v for k, v in core.state_dict().items()}.keys() == {f"cell.{k}" for k in ref.state_dict()}
    assert all(torch.equal(core.cell.state_dict()[k], v) for k, v in ref.state_dict().items())


# -- defaults unchanged, end to end --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bptt", "dni"])
def test_the_flags_at_their_defaults_change_nothing(capfd, tmp_path, method) -> None:
    args = [
        "train",
        "--task",
        "copy",
        "--method",
        method,
        "--T",
        "2",
        *TINY,
        "--max-samples",
        "48",
        "--log-every",
        "16",
    ]
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "plain")
    assert code == 0, err
    code, _, err = run_cli(capfd, *args, *DEFAULTS, "--out", tmp_path / "explicit")
    assert code == 0, err
    plain, explicit = summary_and_rows(tmp_path / "plain"), summary_and_rows(tmp_path / "explicit")
    assert plain == explicit
    assert (plain[0]["cell"], plain[0]["init"], plain[0]["optimizer"], plain[0]["clip"], plain[0]["item_bits"]) == (
        "lstm", "torch", "adam", 0.0, 8,
    )  # fmt: skip
    states = [RunFolder(tmp_path / d, {}).load_state()["training"] for d in ("plain", "explicit")]
    assert same_tensors(*states)
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert {k: config[k] for k in IMPLIED} == IMPLIED  # the values a run from before these options ran with


def test_a_run_from_before_the_options_still_resumes() -> None:
    """Its config lacks the new keys; they are implied at today's values, and only a real change is refused."""
    now = RecurrentConfig(max_samples=10).validate().resolve().to_dict()
    before = {k: v for k, v in now.items() if k not in IMPLIED}
    assert resume_mismatch(before, now, RESUMABLE, IMPLIED) is None
    assert "cell" in resume_mismatch(before, {**now, "cell": "peephole"}, RESUMABLE, IMPLIED)


# -- the options reach the run -------------------------------------------------------------------------------------


def test_the_probe_flags_run_are_recorded_and_resume_exactly(capfd, tmp_path) -> None:
    args = ["train", "--task", "copy", "--method", "dni", "--T", "2", *TINY, *PROBE_FLAGS, "--log-every", "8"]
    code, _, err = run_cli(capfd, *args, "--max-samples", "32", "--out", tmp_path / "whole")
    assert code == 0, err
    code, _, err = run_cli(capfd, *args, "--max-samples", "16", "--out", tmp_path / "split")
    assert code == 0, err
    code, _, err = run_cli(capfd, *args, "--max-samples", "32", "--out", tmp_path / "split", "--resume")
    assert code == 0, err
    whole, split = summary_and_rows(tmp_path / "whole"), summary_and_rows(tmp_path / "split")
    assert whole == split
    summary, config = whole[0], json.loads((tmp_path / "whole" / "config.json").read_text())
    recorded = {"cell": "peephole", "init": "uniform", "optimizer": "rmsprop", "clip": 0.5}
    assert {k: summary[k] for k in recorded} == recorded and summary["item_bits"] == 3
    assert {k: config[k] for k in recorded} == recorded and config["item_bits"] == 3
    states = [RunFolder(tmp_path / d, {}).load_state()["training"] for d in ("whole", "split")]
    assert same_tensors(*states)
    model, optimizer = states[0]["model"], states[0]["optimizer"]
    assert model["core.peephole"].shape == (3, 8) and model["core.cell.weight_ih"].shape == (32, 3 + 1)
    assert model["readout.weight"].shape == (3, 8)  # 3-bit items
    assert {"square_avg", "momentum_buffer"} <= optimizer["state"][0].keys()  # RMSProp's state was saved
    # the same folder with another cell is another run
    code, _, err = run_cli(
        capfd, *args, "--cell", "lstm", "--max-samples", "48", "--out", tmp_path / "split", "--resume"
    )
    assert code == 2 and len(err.splitlines()) == 1 and "cell" in err, err


def copy_setup(**changes: object) -> CopySetup:
    cfg = RecurrentConfig(task=RecurrentTask.COPY, hidden_size=8, batch_size=4, T=3, max_samples=1, **changes)
    return CopySetup(cfg.validate().resolve(), None)


def steps_of(setup: CopySetup, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(the gradient the optimizer is given, the weights before, the weights after) at each of its steps over `n`
    sequences of length 2; the core and readout flattened."""
    seen: list = []
    params = [p for g in setup.trainer.optimizer.param_groups for p in g["params"]]
    flat = lambda xs: torch.cat([x.detach().flatten() for x in xs])  # noqa: E731
    pre = setup.trainer.optimizer.register_step_pre_hook(lambda *_: seen.append([flat(p.grad for p in params),
                                                                                 flat(params)]))  # fmt: skip
    post = setup.trainer.optimizer.register_step_post_hook(lambda *_: seen[-1].append(flat(params)))
    gen = torch.Generator().manual_seed(8)
    for _ in range(n):
        b = setup.task.sample(4, 2, gen)
        setup.trainer.train_sequence(b.inputs, b.targets, b.mask)
    pre.remove(), post.remove()
    return [tuple(s) for s in seen]


@pytest.mark.parametrize("method", [RecurrentMethod.BPTT, RecurrentMethod.DNI_AUX])
def test_clip_bounds_the_gradient_norm_of_every_step(method) -> None:
    """--clip C: every gradient the model's optimizer is given has norm <= C (DNI + Aux: its head's included); at
    the first step that would exceed it (the weights still the same in both runs) it is the same direction."""
    free = steps_of(copy_setup(method=method))
    clipped = steps_of(copy_setup(method=method, clip=1e-2))
    assert len(clipped) == len(free) and sum(g.norm() > 1e-2 for g, _, _ in free) >= 3
    assert all(g.norm() <= 1e-2 * (1 + 1e-5) for g, _, _ in clipped)
    i = next(k for k, (g, _, _) in enumerate(free) if g.norm() > 1e-2)
    (g_free, w_free, _), (g_clip, w_clip, _) = free[i], clipped[i]
    assert torch.equal(w_free, w_clip)
    assert torch.allclose(g_clip, g_free * 1e-2 / g_free.norm(), atol=1e-7)


def test_rmsprop_is_what_the_model_steps_with() -> None:
    setup = copy_setup(method=RecurrentMethod.BPTT, optimizer=RecurrentOptimizer.RMSPROP, lr=1e-3)
    opt = setup.trainer.optimizer
    assert isinstance(opt, torch.optim.RMSprop)
    assert {k: opt.defaults[k] for k in ("lr", "alpha", "eps", "momentum", "centered")} == {
        "lr": 1e-3, "alpha": 0.95, "eps": 1e-4, "momentum": 0.9, "centered": False,
    }  # fmt: skip
    g, before, after = steps_of(setup, 1)[0]  # RMSProp's first step: v = 0.05 g², Δ = -lr g / (√v + ε)
    assert torch.allclose(after - before, -1e-3 * g / ((0.05 * g * g).sqrt() + 1e-4), atol=1e-7)
    # M keeps Adam, whatever the model's optimizer
    dni = copy_setup(method=RecurrentMethod.DNI, optimizer=RecurrentOptimizer.RMSPROP)
    assert isinstance(dni.trainer.synthesizer_optimizer, torch.optim.Adam)


def test_item_bits_sets_the_tasks_width(capfd, tmp_path) -> None:
    for task, extra, channels in (("copy", [], (5, 4)), ("repeat-copy", ["--max-repeats", "2"], (6, 5))):
        out = tmp_path / task
        args = ["train", "--task", task, "--method", "bptt", "--T", "2", *TINY, "--item-bits", "4", *extra]
        code, _, err = run_cli(capfd, *args, "--max-samples", "8", "--log-every", "8", "--out", out)
        assert code == 0, err
        model = RunFolder(out, {}).load_state()["training"]["model"]
        assert (model["core.cell.weight_ih"].shape[1], model["readout.weight"].shape[0]) == channels
    batch = copy_setup(item_bits=4).task.sample(2, 3, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (7, 2, 5) and batch.targets.shape == (7, 2, 4)
    assert torch.equal(batch.targets[4:], batch.inputs[:3, :, :4])


# -- bad values ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--cell", "gru"], ["--cell", "gru"]),
        (["--init", "xavier"], ["--init", "xavier"]),
        (["--optimizer", "sgd"], ["--optimizer", "sgd"]),
        (["--clip", "-1"], ["--clip", "-1"]),
        (["--clip", "nan"], ["--clip", "nan"]),
        (["--item-bits", "0"], ["--item-bits", "0"]),
        (["--item-bits", "-3"], ["--item-bits", "-3"]),
        (["--item-bits", "2.5"], ["--item-bits", "2.5"]),
        (["--task", "ptb-char", "--item-bits", "4"], ["--item-bits", "copy and repeat-copy", "not of ptb-char"]),
        (["--task", "multinet", "--cell", "peephole"], ["--cell", "not of multinet"]),
        (["--clip", "1"], ["--clip", "add --task"]),  # feed-forward training has no --clip
    ],
    ids=[
        "cell",
        "init",
        "optimizer",
        "clip-negative",
        "clip-nan",
        "bits-0",
        "bits-negative",
        "bits-float",
        "bits-ptb",
        "cell-multinet",
        "clip-without-task",
    ],  # fmt: skip
)
def test_bad_values_are_one_line_and_exit_2(capfd, tmp_path, args, needles) -> None:
    base = [] if "add --task" in needles else ["--task", "copy", "--max-samples", "8"]
    out = tmp_path / "run"
    code, stdout, err = run_cli(capfd, "train", *base, *args, "--out", out)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("synthgrad: error: "), err
    assert all(n in err for n in needles), err
    assert not out.exists()


def test_bad_values_in_an_experiment_file_are_one_line(capfd, tmp_path) -> None:
    for line, needle in (('cell = "gru"', "--cell gru"), ("clip = -2.0", "--clip"), ("item_bits = 0", "--item-bits")):
        (tmp_path / "bad.toml").write_text(f'task = "copy"\nmax_samples = 8\n{line}\n')
        code, _, err = run_cli(capfd, "train", "--config", tmp_path / "bad.toml", "--out", tmp_path / "run")
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
        assert not (tmp_path / "run").exists()


# -- the probe runner -------------------------------------------------------------------------------------------------


def load_runner():
    spec = importlib.util.spec_from_file_location("recurrent_probes", REPO / "benchmarks" / "recurrent_probes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_runners_help_lists_every_probe() -> None:
    r = subprocess.run([sys.executable, "benchmarks/recurrent_probes.py", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    runner = load_runner()
    assert all(name in r.stdout for name in runner.PROBES) and "--quick" in r.stdout
    default = runner.rows("copy", [2, 4], ["bptt", "dni"], runner.DEFAULT_PROBES)
    assert len(default) == 2 * 2 * 6 and {r["probe"] for r in default} == set(runner.DEFAULT_PROBES)


def test_the_probe_runner_quick_writes_json_and_table(capfd, tmp_path, monkeypatch) -> None:
    """--quick on one row, its `synthgrad train` run in this process (a process start costs more than the row),
    then again: the finished row is read back, not trained twice."""
    runner = load_runner()
    calls, real_run = [], subprocess.run

    def in_process(cmd, **kw):
        if cmd[:3] != [sys.executable, "-m", "synthgrad.cli"]:
            return real_run(cmd, **kw)
        calls.append(cmd)
        code, out, err = run_cli(capfd, *cmd[3:], "--hidden-size", "8")
        return subprocess.CompletedProcess(cmd, code, out, err)

    monkeypatch.setattr(runner.subprocess, "run", in_process)
    args = ["--quick", "--T", "2", "--methods", "bptt", "--probes", "peephole", "--work", str(tmp_path / "w"),
            "--json", str(tmp_path / "p.json")]  # fmt: skip
    assert runner.main(args) == 0
    assert runner.main(args) == 0 and len(calls) == 1
    row = json.loads((tmp_path / "p.json").read_text())["rows"][0]
    assert row["command"].startswith("synthgrad train --task copy --method bptt --T 2 --seed 0 --max-samples 64")
    assert "--cell peephole" in row["command"] and "--threads 1" in row["command"]
    assert (row["max_length"], row["paper_score"], row["samples"]) == (0, 0, 64) and row["wall_time_s"] > 0
    table = (tmp_path / "p.md").read_text()
    assert row["final_level"] == 1 and row["final_level_bits"] > 0.15 and row["max_length_per_step"] == 0
    bits = f"{row['final_level_bits']:.2f} at 1"  # the finer measure: bits wrong at the level the run ended on
    assert f"| peephole | `--cell peephole` | bptt | 2 | 0 | 0 | 7 | {bits} | 0 | 64 |" in table
