"""The language model through the CLI (`synthgrad train --model gpt`, `synthgrad sample`): its outputs, budgets in
tokens that end a run within an epoch and resume exactly, bad input in one line, and its config defaults. Every
run reads a small Penn Treebank the tests write (a few thousand characters), so each takes about a second."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from helpers import checkpoint_of, run_cli
from synthgrad.config import Method, TrainConfig, from_dict
from synthgrad.data.ptb import load_ptb
from synthgrad.errors import ConfigError
from synthgrad.parallel.config import ParallelConfig
from synthgrad.synthesizers import SynthesizerKind

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "market", "stock", "rose", "fell", "new", "york",
         "share", "price"]  # fmt: skip
T, B = 16, 8  # the tiny model's window and batch: 128 tokens a step
TINY = ["--model", "gpt", "--layers", "2", "--width", "16", "--heads", "2", "--context", str(T), "--batch-size",
        str(B), "--threads", "1", "--no-progress", "--seed", "1"]  # fmt: skip


def write_small_ptb(directory: Path, lines: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Mikolov's two formats for a few hundred random sentences over 16 words: ptb.{split}.txt (words) and
    ptb.char.{split}.txt (characters separated by spaces, `_` between words)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (lines or {"train": 60, "valid": 12, "test": 12}).items():
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]
        (directory / f"ptb.{split}.txt").write_text("".join(f" {s} \n" for s in sentences))
        chars = [" ".join("_".join(s.split())) for s in sentences]
        (directory / f"ptb.char.{split}.txt").write_text("".join(f" {c} \n" for c in chars))
    return directory


@pytest.fixture(scope="module")
def ptb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_ptb(tmp_path_factory.mktemp("small_ptb"))


def train(capfd, out: Path, data: Path, *args: object) -> tuple[int, str, str]:
    return run_cli(capfd, "train", *TINY, "--data-dir", data, "--out", out, *args)


def steps(n: int) -> str:
    """A budget of n steps, in tokens."""
    return str(n * B * T)


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("synthgrad: error: "), err
    assert all(n in lines[0] for n in needles), (needles, lines[0])


# ---------------------------------------------------------------------------------------------- a run
def test_a_tiny_run_writes_every_output_and_samples_text(capfd, tmp_path, ptb) -> None:
    out = tmp_path / "run"
    code, stdout, err = train(capfd, out, ptb, "--method", "cdni", "--max-tokens", steps(6), "--eval-tokens",
                              steps(3))  # fmt: skip
    assert code == 0, err
    assert stdout.startswith("cdni: valid ") and "bits/char after 768 tokens" in stdout
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.json", "vocab.json",
                 "learning_curves.png", "learning_curves_time.png", "train.log"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"] == 6 * B * T and summary["steps"] == 6 and summary["modules"] == 2
    assert summary["valid_bpc"] == pytest.approx(summary["valid_loss"] / 0.6931471805599453)
    assert summary["wall_time_s"] > 0 and 0 < summary["test_bpc"] < 6
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [3 * B * T, 6 * B * T]
    assert all({"valid_bpc", "test_bpc", "train_time_s", "wall_time_s"} <= r.keys() for r in rows)

    code, text, err = run_cli(capfd, "sample", "--out", out, "--prompt", "the cat", "--tokens", "40", "--seed", "3")
    assert code == 0, err
    text = text.removesuffix("\n")
    assert text.startswith("the cat") and len(text) == len("the cat") + 40 and "_" not in text
    again = run_cli(capfd, "sample", "--out", out, "--prompt", "the cat", "--tokens", "40", "--seed", "3")[1]
    assert again.removesuffix("\n") == text  # the seed fixes the draws
    code, _, err = run_cli(capfd, "sample", "--out", out, "--prompt", "THE")
    one_line_error(code, err, "not in the vocabulary", "'T'")


def test_word_level_reports_perplexity(capfd, tmp_path, ptb) -> None:
    out = tmp_path / "words"
    code, stdout, err = train(capfd, out, ptb, "--dataset", "ptb-word", "--context", "8", "--method", "backprop",
                              "--max-tokens", "256")  # fmt: skip
    assert code == 0, err
    assert "perplexity per word" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["valid_ppl"] > 1 and "valid_bpc" not in summary
    code, text, err = run_cli(capfd, "sample", "--out", out, "--prompt", "the cat", "--tokens", "5")
    assert code == 0 and text.split()[:2] == ["the", "cat"] and len(text.split()) == 7, err


@pytest.mark.parametrize("method", ["dni", "backprop"])
def test_a_budget_ends_a_run_within_an_epoch_and_resume_continues_exactly(capfd, tmp_path, ptb, method) -> None:
    """Run A trains into its second epoch; run B stops within the first (E steps of 8 windows), with DNI's folded
    batches in flight, and is resumed with A's budget: the same weights, optimizer states and rows."""
    e = (len(load_ptb("ptb-char", ptb).train) - 1) // T // B  # steps per epoch
    stop = next(s for s in range(e - 1, 0, -1) if (s - 1) % 3 == 0 and s % 4)  # its last batch folded (every 3rd)
    common = ["--method", method, "--eval-tokens", steps(4)]
    assert train(capfd, tmp_path / "a", ptb, *common, "--max-tokens", steps(e + 2))[0] == 0
    assert train(capfd, tmp_path / "b", ptb, *common, "--max-tokens", steps(stop))[0] == 0
    manifest, state = checkpoint_of(tmp_path / "b")
    assert manifest["progress"]["steps"] == stop and manifest["progress"]["epoch"] == 0
    if method == "dni":
        assert any(s["flights"] for s in state["job"]["stages"]), "no folded batch in flight: tests less"
    code, _, err = train(capfd, tmp_path / "b", ptb, *common, "--max-tokens", steps(e + 2), "--resume")
    assert code == 0, err
    want, got = checkpoint_of(tmp_path / "a")[1]["job"], checkpoint_of(tmp_path / "b")[1]["job"]
    for a, b in zip(want["stages"], got["stages"], strict=True):
        for k, v in a["module"].items():
            assert torch.equal(v, b["module"][k]), k
        assert torch.equal(a["optimizer"]["state"][0]["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])
        assert a["steps"] == b["steps"] == e + 2
    rows_a = {r["step"]: r for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())}
    rows_b = {r["step"]: r for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())}
    every_4th = set(range(4, e + 3, 4))
    assert set(rows_a) == every_4th | {e, e + 2} and set(rows_b) == set(rows_a) | {stop}  # e: the epoch's end
    for step, row in rows_a.items():
        assert rows_b[step]["valid_bpc"] == row["valid_bpc"] and rows_b[step]["tokens"] == row["tokens"]
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == e + 2


def test_a_budget_in_minutes_stops_the_run(capfd, tmp_path, ptb) -> None:
    code, _, err = train(capfd, tmp_path / "m", ptb, "--method", "backprop", "--max-minutes", "1e-6")
    assert code == 0, err
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["valid_bpc"] > 0  # evaluated and summarised after its first step


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--context", "5000"], ["context 5000 is longer than the", "split"]),
        (["--width", "10", "--heads", "3"], ["--width 10 is not divisible by --heads 3"]),
        (["--dataset", "ptb-foo"], ["--dataset", "'ptb-foo'"]),
        (["--dataset", "mnist"], ["--model gpt reads text"]),
        (["--synthesizer", "lowrank"], ["--synthesizer lowrank flattens"]),
        (["--max-tokens", "100"], ["--max-tokens 100 is less than one batch"]),
        (["--modules", "9"], ["--modules 9 is more than the model's 4 layers"]),
        (["--positions", "sinusoidal"], ["--positions", "'sinusoidal'"]),
        (["--batch-size", "4000"], ["batch size 4000 is more than the"]),
    ],
    ids=[
        "context-too-long",
        "heads",
        "unknown-dataset",
        "gpt-on-images",
        "flat-synthesizer",
        "budget",
        "modules",
        "positions",
        "batch",
    ],  # fmt: skip
)
def test_bad_input_is_one_line_exit_2(capfd, tmp_path, ptb, args, needles) -> None:
    code, _, err = train(capfd, tmp_path / "bad", ptb, "--method", "dni", *args)
    one_line_error(code, err, *needles)
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made


def test_unknown_dataset_in_a_config_file_and_lm_options_elsewhere(capfd, tmp_path, ptb) -> None:
    (tmp_path / "x.toml").write_text('model = "gpt"\ndataset = "wikitext"\n')
    code, _, err = train(capfd, tmp_path / "o", ptb, "--config", tmp_path / "x.toml")
    one_line_error(code, err, "unknown dataset 'wikitext'", "ptb-char")
    code, _, err = run_cli(capfd, "train", "--dataset", "mnist", "--context", "8", "--out", tmp_path / "p")
    one_line_error(code, err, "--context", "--model gpt")
    code, _, err = run_cli(capfd, "train", "--model", "fcn", "--dataset", "ptb-char", "--out", tmp_path / "q")
    one_line_error(code, err, "ptb-char is text")


# ---------------------------------------------------------------------------------------------- the config
def test_gpt_defaults_and_recipe() -> None:
    cfg = from_dict({"model": "gpt", "method": "dni"}).validate().resolve()
    assert (cfg.dataset, cfg.batch_size, cfg.context, cfg.heads, cfg.width, cfg.positions) == (
        "ptb-char", 32, 64, 4, 64, "learned")  # fmt: skip
    assert cfg.modules == 2 and cfg.synthesizer.tokenwise and cfg.max_tokens and cfg.eval_tokens
    assert not cfg.synthesizer_spec().batch_norm
    bp = from_dict({"model": "gpt", "method": "backprop"}).validate().resolve()
    assert bp.modules == 1 and bp.fold_every == 0
    assert from_dict({"model": "gpt", "max_minutes": 5.0}).resolve().max_tokens is None  # one budget, the user's
    assert from_dict({"model": "fcn"}).batch_size == 256 and TrainConfig().resolve().modules is None  # unchanged
    p = ParallelConfig(from_dict({"model": "gpt", "method": "cdni", "layers": 6}), stages=3).validate().resolve()
    assert p.train.modules == 3  # in parallel a stage is a module
    with pytest.raises(ConfigError, match="--max-minutes"):
        ParallelConfig(from_dict({"model": "gpt", "method": "dni", "max_minutes": 1.0})).validate()
    with pytest.raises(ConfigError, match="--synthesizer token-mlp reads"):
        TrainConfig(method=Method.DNI, synthesizer=SynthesizerKind.TOKEN_MLP).validate()
