"""A language model as a task of the one training loop: Penn Treebank windows, the LM loss, cDNI's context per
position, evaluation in bits per character (per-word perplexity at word level), and sampling from a run.

The training set is the train split's contiguous windows of T + 1 ids (`synthgrad.data.windows`) as two (N, T)
tensors, inputs and targets, indexed by the loop's batch order like images are; a step reads B windows, B·T
tokens. cDNI's synthesizers read, at every position, the id of the token it must predict (looked up as the row
its one-hot would select; [Note: SG units for tokens] in synthgrad/synthesizers.py). Evaluation scores every
target of the valid and test splits exactly once, in order, each window read from its own start (no context
carried over from the window before it: a token early in a window is predicted from fewer tokens than the
model's context, so these numbers are a little worse than a sliding-window evaluation would give).

`train_lm` is `synthgrad train --model gpt`: a `ChainJob` (backprop, or the model cut into `modules` decoupled
modules) through `fit` in the run folder, with budgets in tokens or minutes; the folder also holds vocab.json,
which `synthgrad sample` reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthgrad.checkpoint import load_checkpoint, write_json
from synthgrad.config import Method, TrainConfig, from_dict
from synthgrad.data import resolve_data_dir
from synthgrad.data.ptb import CharCorpus, Corpus, WordCorpus, load_ptb
from synthgrad.data.windows import SplitWindows, Windows
from synthgrad.errors import ConfigError
from synthgrad.models import lm_loss, sample
from synthgrad.training.build import build_network, build_stale_network, model_of
from synthgrad.training.chain_job import ChainJob
from synthgrad.training.loop import Plan, fit
from synthgrad.training.run_folder import MANIFEST, RunFolder, flush_denormals, show_progress
from synthgrad.training.task import Task

LN2 = math.log(2.0)
CHAR_METRICS = ("valid_bpc", "test_bpc", "valid_loss", "test_loss")  # bits per character; nats per character
WORD_METRICS = ("valid_ppl", "test_ppl", "valid_loss", "test_loss")  # per-word perplexity; nats per word
VOCAB_FILE = "vocab.json"
# Tokens per evaluation batch: 64 windows of 64. Small batches stay in cache: at D = 64 one thread scores ~37k
# tokens/s with 64 windows of 64, 24k with 512 and 19k with 2,048 (measured on the project's CPU machine).
EVAL_TOKENS = 4096


@dataclass(frozen=True)
class LMData:
    """A corpus cut into windows of the model's context."""

    corpus: Corpus
    windows: SplitWindows

    @property
    def word_level(self) -> bool:
        return isinstance(self.corpus, WordCorpus)

    def task(self, *, examples: int | None = None, conditioned: bool = False, device: str | torch.device = "cpu"):
        """The training windows (the first `examples`, default all) as a `Task`, scored on valid and test."""
        train = self.windows.train
        n = min(examples or len(train), len(train))
        x, y = train.batch(torch.arange(n))  # (N, T) inputs, (N, T) targets
        word = self.word_level
        metrics = WORD_METRICS if word else CHAR_METRICS

        def score(model: nn.Module) -> dict[str, float]:
            return evaluate_lm(model, self.windows.valid, self.windows.test, word_level=word)

        return Task(x.to(device), y.to(device), self.corpus.vocab_size, lm_loss, score, metrics,
                    target_ids if conditioned else None)  # fmt: skip

    def write_vocab(self, out: Path) -> None:
        """vocab.json in the run folder: what `synthgrad sample` encodes a prompt and decodes ids with."""
        write_json(out / VOCAB_FILE, {"vocab": list(self.corpus.vocab), "word_level": self.word_level})


def target_ids(y: Tensor) -> Tensor:
    """cDNI's context of a batch: (B, T) the id of the token each position predicts; a token-wise synthesizer
    looks up the row its one-hot would select, so no (B, T, V) tensor is built."""
    return y


def load_lm(cfg: TrainConfig) -> LMData:
    """The corpus of `cfg.dataset` cut into windows of `cfg.context` (resolved); ConfigError when a split is too
    short for the context or the training windows for a batch, DataError naming a missing or malformed file."""
    corpus = load_ptb(cfg.dataset, resolve_data_dir(cfg.data_dir))
    windows = SplitWindows.from_corpus(corpus, cfg.context)
    windows.train.batches_per_epoch(cfg.batch_size)
    return LMData(corpus, windows)


@torch.no_grad()
def split_loss(model: nn.Module, windows: Windows) -> float:
    """Mean nats per target over every target of the split, the shorter last window included, scored by `model`
    in eval mode (its mode is restored)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    try:
        for x, y in windows.sequential(max(1, EVAL_TOKENS // windows.context)):
            logits = model(x.to(device))  # (B, T, V)
            total += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
    finally:
        model.train(was)
    return total / windows.tokens


def evaluate_lm(model: nn.Module, valid: Windows, test: Windows, *, word_level: bool = False) -> dict[str, float]:
    """{"valid_bpc", "test_bpc", "valid_loss", "test_loss"} (character level: bits and nats per character), or
    with `word_level` {"valid_ppl", "test_ppl", ...} (per-word perplexity e^loss)."""
    v, t = split_loss(model, valid), split_loss(model, test)
    if word_level:
        return {"valid_ppl": math.exp(v), "test_ppl": math.exp(t), "valid_loss": v, "test_loss": t}
    return {"valid_bpc": v / LN2, "test_bpc": t / LN2, "valid_loss": v, "test_loss": t}


def lm_plan(
    cfg: TrainConfig,
    examples: int,
    *,
    progress: bool,
    desc: str,
    eval_every: int = 0,
    target: float | None = None,
    stop_at_target: bool = False,
) -> Plan:
    """The loop's plan for a resolved gpt config: B windows of T tokens a step; the budget in tokens as steps
    (whole batches), in minutes, and epochs, whichever ends first; an evaluation and a checkpoint every
    `eval_tokens` (or `eval_every` steps, when given)."""
    per_step = cfg.batch_size * cfg.context
    every = eval_every or max(1, cfg.eval_tokens // per_step)
    steps = None if cfg.max_tokens is None else max(1, cfg.max_tokens // per_step)
    return Plan(cfg.epochs, cfg.batch_size, cfg.seed, examples, eval_every=every, target=target, progress=progress,
                desc=desc, max_steps=steps, max_minutes=cfg.max_minutes, checkpoint_every=every,
                tokens_per_example=cfg.context, stop_at_target=stop_at_target)  # fmt: skip


def train_lm(cfg: TrainConfig, run: RunFolder, saved: dict | None, *, progress: bool | None = None) -> dict:
    """`synthgrad train --model gpt` on an opened run folder (`cfg` validated and resolved); returns the summary
    (also written to summary.json)."""
    data = load_lm(cfg)
    run.start()
    try:
        data.write_vocab(run.out)
        with flush_denormals():
            task = data.task(examples=cfg.train_limit, conditioned=cfg.method is Method.CDNI, device=cfg.device)
            net = build_network(cfg, task.input_shape, task.num_classes).to(cfg.device)
            job = ChainJob(net, task, diagnose_every=cfg.diagnose_every)
            if saved is not None:
                job.load_training_state(saved["job"])
            plan = lm_plan(cfg, len(task.train_y), progress=show_progress(progress), desc=cfg.method.value)
            result = fit(job, run, plan)
        blocks = sum(p.numel() for s in net.stages for p in s.block.parameters())
        synths = sum(p.numel() for s in net.stages if s.interface is not None for p in s.interface.parameters())
        summary = {
            "method": cfg.method.value, "dataset": cfg.dataset, "model": cfg.model, "layers": cfg.layers,
            "width": cfg.width, "heads": cfg.heads, "context": cfg.context, "positions": cfg.positions,
            "modules": len(net.stages), "fold_every": cfg.fold_every, "update_prob": cfg.update_prob,
            "seed": cfg.seed, "parameters": blocks, "synthesizer_parameters": synths,
            "tokens_per_s": result["tokens"] / result["train_time_s"] if result["train_time_s"] else None,
            **result,
        }  # fmt: skip
        learning_curves(run.progress.history, run.out, lm_title(cfg), word_level=data.word_level)
        from synthgrad import plots

        plots.gradient_quality(run.progress.diagnostics, run.out / "gradient_quality.png", lm_title(cfg))
        run.write_summary(summary)
        return summary
    finally:
        run.close()


def lm_title(cfg: TrainConfig) -> str:
    return f"{cfg.dataset} GPT L={cfg.layers} D={cfg.width} T={cfg.context}, {cfg.method.value}"


def learning_curves(history: list[dict], out: Path, title: str, *, word_level: bool = False) -> None:
    """learning_curves.png (validation and test BPC, or perplexity, and the training loss against training
    tokens) and learning_curves_time.png (against training time, evaluation excluded)."""
    from synthgrad import plots

    metric, label = ("ppl", "perplexity per word") if word_level else ("bpc", "bits per character")
    ys = [(f"valid_{metric}", "validation"), (f"test_{metric}", "test")]
    if not word_level:
        rows = [{**r, "train_bpc": r["train_loss"] / LN2} for r in history]
        ys.append(("train_bpc", "training (mean since the last row)"))
    else:
        rows = [{**r, "train_ppl": math.exp(min(r["train_loss"], 50.0))} for r in history]
        ys.append(("train_ppl", "training (mean since the last row)"))
    plots.curves(rows, out / "learning_curves.png", x="tokens", ys=ys, xlabel="training tokens", ylabel=label,
                 title=title)  # fmt: skip
    plots.curves(rows, out / "learning_curves_time.png", x="train_time_s", ys=ys,
                 xlabel="training time (s, evaluation excluded)", ylabel=label, title=title)  # fmt: skip


# ---------------------------------------------------------------------------------------------- sampling
def sample_run(
    out: str | Path, prompt: str | None = None, *, tokens: int = 200, temperature: float = 1.0, seed: int = 0
) -> str:
    """Text generated by the language model of the run in `out` from its last checkpoint: the prompt (default:
    a line end, the start of a sentence) and `tokens` more symbols drawn at `temperature` (0: the most likely)
    with generator seed `seed`. At character level a space in the prompt is PTB's word space `_`, and `_` is
    printed as a space."""
    out = Path(out)
    config, vocab = _read_json(out / "config.json", "config.json"), _read_json(out / VOCAB_FILE, VOCAB_FILE)
    if config.get("model") != "gpt":
        raise ConfigError(f"{out} holds a {config.get('model')} run, not a language model (--model gpt)")
    if tokens < 0:
        raise ConfigError(f"--tokens must be >= 0, got {tokens}")
    known = {f.name for f in fields(TrainConfig)}
    cfg = from_dict({k: v for k, v in config.items() if k in known})
    word = bool(vocab["word_level"])
    corpus = (WordCorpus if word else CharCorpus)(*(torch.empty(0, dtype=torch.long),) * 3, tuple(vocab["vocab"]))
    text = ("<eos>" if word else "\n") if prompt is None else prompt if word else prompt.replace(" ", "_")
    ids = corpus.encode(text)
    model = trained_model(out, cfg, config.get("schedule"), corpus.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    drawn = sample(model, ids[None], tokens, context=cfg.context, temperature=temperature, generator=generator)
    decoded = corpus.decode(drawn[0])
    return decoded if word else decoded.replace("_", " ")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} holds no language model run ({what} not found)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} is not a synthgrad {what}")
    return value


def trained_model(out: Path, cfg: TrainConfig, schedule: str | None, vocab_size: int) -> nn.Module:
    """The model of the run in `out` at its last checkpoint, assembled from every rank's part: a chain of
    `synthgrad train` or of the single-process schedule, the stages of a decoupled or stale pipeline, or the parts
    of an exact-gradient baseline."""
    manifest = _read_json(out / MANIFEST, MANIFEST) if (out / MANIFEST).exists() else None
    if manifest is None or not isinstance(manifest.get("files"), list):
        raise ConfigError(f"{out} holds no checkpoint yet: nothing to sample from")
    states = [load_checkpoint(out / Path(name).name)["state"]["job"] for name in manifest["files"]]
    cfg = cfg.resolve()  # config.json holds the resolved config: this changes nothing
    shape = (cfg.context,)
    if schedule in (None, "single"):
        net = build_network(cfg, shape, vocab_size)
        net.load_training_state(states[0])
        return net
    if schedule in ("decoupled", "stale"):
        from synthgrad.parallel.partition import cuts_of, split_layers

        cuts = cuts_of(split_layers(cfg.model_layers, len(states)))
        net = (build_network if schedule == "decoupled" else build_stale_network)(cfg, shape, vocab_size, cuts=cuts)
        for stage, state in zip(net.stages, states, strict=True):
            stage.load_training_state(state["stage"])
        return net
    full = model_of(cfg, shape, vocab_size)
    full.load_state_dict({k: v for state in states for k, v in state["model"].items()})
    return full
