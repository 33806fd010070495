"""Penn Treebank characters (PAPER.md §4): `batch_size` parallel streams trained by `TruncatedBPTT.train_chunk` in
chunks of T, the state carried across chunks and reset at each epoch; validation BPC at every metric row, early
stopping on it, and the test BPC of the best validation weights."""

from __future__ import annotations

import copy
import math
from itertools import islice

import torch
from torch import nn

from synthgrad import plots
from synthgrad.data.ptb import CharCorpus
from synthgrad.errors import ConfigError
from synthgrad.recurrent.bptt import TruncatedBPTT
from synthgrad.recurrent.budget import Budget
from synthgrad.recurrent.task_config import EVAL_ROWS, RecurrentConfig
from synthgrad.recurrent.tasks import batchify, char_step_loss, evaluate_bpc, stream_chunks

LN2 = math.log(2.0)


class PtbRun:
    """One PTB run: the streams, the model, the trainer and the loop's state `st` (restored from `saved`)."""

    def __init__(self, cfg: RecurrentConfig, corpus: CharCorpus, run: Budget, saved: dict | None) -> None:
        self.cfg, self.corpus, self.run = cfg, corpus, run
        self.vocab = corpus.vocab_size
        self.train = batchify(corpus.train, cfg.batch_size)  # (B, N)
        self.valid, self.test = (batchify(s[: cfg.eval_chars], EVAL_ROWS) for s in (corpus.valid, corpus.test))
        torch.manual_seed(cfg.seed)
        self.core = cfg.core(self.vocab)
        self.readout = nn.Linear(cfg.hidden_size, self.vocab)
        boundary, aux = cfg.parts(self.core)
        self.trainer = TruncatedBPTT(self.core, self.readout, char_step_loss, cfg.model_optimizer(), T=cfg.T,
                                     boundary=boundary, aux=aux, clip=cfg.clip)  # fmt: skip
        self.n_chunks = math.ceil((self.train.shape[1] - 1) / cfg.T)
        self.st: dict = {"epoch": 0, "chunk": 0, "state": None, "best": None, "bad": 0, "last_eval": -1,
                         "sums": _zero_sums()}  # fmt: skip
        if saved is not None:
            self.trainer.load_training_state(saved["training"])
            self.st = saved["task"]
        self.state = tuple(self.st["state"]) if self.st["state"] is not None else None

    def epoch(self) -> None:
        """Train on the rest of the current epoch's chunks, or until the budget is spent."""
        st, run, cfg = self.st, self.run, self.cfg
        for x, y in islice(stream_chunks(self.train, cfg.T, self.vocab), st["chunk"], None):  # x (T', B, V), y (T', B)
            self.state, stats = self.trainer.train_chunk(x, y, self.state, last=st["chunk"] == self.n_chunks - 1)
            st["chunk"] += 1
            run.check_step(stats.loss, "the training loss", self.trainer, steps=x.shape[0])
            s = st["sums"]
            s["bits"] += stats.loss * x.shape[1] / LN2  # loss = Σ_t batch-mean nats ([Note: chunk loss])
            s["chars"] += x.shape[0] * x.shape[1]
            if stats.sg_loss is not None:
                s["sg"], s["n_sg"] = s["sg"] + stats.sg_loss, s["n_sg"] + 1
            run.postfix(bpc=f"{stats.loss / x.shape[0] / LN2:.3f}")
            if run.advance(x.shape[0] * x.shape[1]):
                self.validate_and_record()
                self.save()
            if run.exhausted():
                break
        if st["chunk"] == self.n_chunks:  # a new epoch restarts the streams from a zero state
            st["epoch"], st["chunk"], self.state = st["epoch"] + 1, 0, None

    def validate_and_record(self) -> None:
        """Validation BPC, the best weights so far, early stopping (PAPER.md §4), and a metric row."""
        st, p = self.st, self.run.progress
        bpc = evaluate_bpc(self.core, self.readout, self.valid, self.vocab)
        if st["best"] is None or bpc < st["best"]["valid_bpc"]:
            weights = {"core": self.core.state_dict(), "readout": self.readout.state_dict()}
            st["best"] = {"valid_bpc": bpc, "samples": p.samples, "weights": copy.deepcopy(weights)}
            st["bad"] = 0
        else:
            st["bad"] += 1
            p.finished = st["bad"] >= self.cfg.patience
        st["last_eval"] = p.samples
        s = st["sums"]
        self.run.record(
            {
                "epoch": p.samples / self.corpus.train.numel(),
                "train_bpc": _mean(s["bits"], s["chars"]),
                "valid_bpc": bpc,
                "best_valid_bpc": st["best"]["valid_bpc"],
                "sg_loss": _mean(s["sg"], s["n_sg"]),
            }
        )
        st["sums"] = _zero_sums()

    def save(self) -> None:
        state = list(self.state) if self.state is not None else None
        self.run.checkpoint(self.trainer.training_state(), {**self.st, "state": state})

    def test_bpc(self) -> float:
        """Test BPC of the best validation weights."""
        best_core, best_readout = copy.deepcopy(self.core), copy.deepcopy(self.readout)
        best_core.load_state_dict(self.st["best"]["weights"]["core"])
        best_readout.load_state_dict(self.st["best"]["weights"]["readout"])
        return evaluate_bpc(best_core, best_readout, self.test, self.vocab)


def check_streams(cfg: RecurrentConfig, corpus: CharCorpus) -> None:
    """A `ConfigError` naming the fix when a split is too short for its streams (2 characters each at least:
    an input and its target): training's `batch_size`, validation's and test's `EVAL_ROWS`. Checked as soon as
    the text is loaded, before the run folder is written."""
    n = corpus.train.numel()
    if n // cfg.batch_size < 2:
        raise ConfigError(
            f"the PTB training text ({n:,} characters) is too short for --batch-size {cfg.batch_size} streams of "
            f"2 characters or more: use --batch-size {max(1, n // 2)} or less"
        )
    for name, split in (("validation", corpus.valid), ("test", corpus.test)):
        m = split[: cfg.eval_chars].numel()
        if m // EVAL_ROWS < 2:
            raise ConfigError(
                f"the PTB {name} text ({m:,} characters scored) is too short for its {EVAL_ROWS} evaluation streams: "
                f"it needs {2 * EVAL_ROWS} characters or more (the full ptb.char files, and --eval-chars)"
            )


def train_ptb(cfg: RecurrentConfig, run: Budget, corpus: CharCorpus, saved: dict | None) -> dict:
    """Train until the budget is spent or validation stops improving; returns the task's part of the summary."""
    ptb = PtbRun(cfg, corpus, run, saved)
    while not run.exhausted():
        ptb.epoch()
    if ptb.st["last_eval"] != run.progress.samples:
        ptb.validate_and_record()
    ptb.save()
    plots.curves(
        run.progress.history, run.out / "learning_curve.png", x="samples",
        ys=[("train_bpc", "train"), ("valid_bpc", "validation")], xlabel="characters", ylabel="bits per character",
        title=f"PTB characters, {cfg.method.value}, T={cfg.T}, LSTM {cfg.hidden_size}",
    )  # fmt: skip
    return {
        "test_bpc": ptb.test_bpc(),
        "valid_bpc": ptb.st["best"]["valid_bpc"],
        "best_at_samples": ptb.st["best"]["samples"],
        "stopped_early": run.progress.finished,
        "epochs": run.progress.samples / corpus.train.numel(),
        "eval_chars": cfg.eval_chars,
    }


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _zero_sums() -> dict:
    return {"bits": 0.0, "chars": 0, "sg": 0.0, "n_sg": 0}
