"""Copy and Repeat Copy (PAPER.md §4): one batch of fresh sequences per update at the curriculum's level, trained
by `TruncatedBPTT.train_sequence` in chunks of T; a sequence is one episode, or `--episodes` of them back to back
([Note: continuous stream]).

[Note: curriculum error]
    The curriculum (PAPER.md §4) grows the length when "the average error falls below 0.15 bits per sequence".
    We read the error as the number of *wrongly predicted bits* per sequence (`sequence_bit_errors`: output
    > 0.5 vs target over the scored steps), averaged over the curriculum's window of training batches, not as
    the NTM cross-entropy in bits (`sequence_cost_bits`, logged beside it as `cost_bits`). Why: the score is
    the largest length *solved*, and bits wrong measure exactly that — below 0.15 at least 85% of sequences
    are reproduced perfectly — whatever the confidence. Cross-entropy below 0.15 bits per sequence asks for
    a per-bit entropy of 0.15/(8L), ever smaller as L grows, so it would score how long one trains at each
    length (calibration) more than whether the length is solved. Cross-entropy in bits bounds the bits wrong
    from above (a wrong bit costs ≥ 1 bit), so our criterion is the more lenient of the two and our lengths
    are comparable to the paper's only up to that choice; it is the same for every method and every T.

[Note: Repeat Copy curriculum]
    PAPER.md §4 gives one curriculum, on "the sequence length", and Repeat Copy scores above Copy in the paper's
    table, so its score cannot be the length L of the sequence to repeat: storing L vectors is Copy's whole
    difficulty, and Repeat Copy adds counting to it. The paper does not say what it counts. Two readings
    (`--repeat-curriculum`):
      both (default)  L and the number of repeats N start at 1 and grow in turn, L first: (1, 1), (2, 1),
                      (2, 2), (3, 2), … (`TwoAxisCurriculum`); N stops at `max_repeats` (10, the NTM paper's
                      range) and L grows on. The score is the largest N·L solved: the vectors in the output.
      length          L grows; N is drawn uniformly from 1 … `max_repeats` for every batch, and the score is the
                      largest L solved. A length counts as solved only when it is solved for every N drawn, so
                      at L = 1 the core must already count to 10 to emit the end marker.
    "both" counts output vectors, and its levels are what the paper's numbers count: every Repeat Copy entry of
    the paper's table is N·L + 3 of one of its levels ([Note: paper score] in tasks.py; `paper_score` in a
    summary). "length" has no one episode length per level, so its summary's `paper_score` is None. How each
    reading tells the methods apart: reports/recurrent/notes.md, "Repeat Copy curriculum".

[Note: errors by position]
    Where in the output the final model goes wrong: bits wrong at each scored step, in time order, averaged over
    `POSITION_SEQUENCES` fresh sequences at the level the run was working on when it ended (the first one not
    solved; Repeat Copy with `--repeat-curriculum length` draws one N for them all), run forward from the start
    state with the final weights, from a generator of its own (the training stream is left untouched). Each of
    them is one episode from the zero state, whatever `--episodes` ([Note: continuous stream]).

[Note: continuous stream]
    The paper runs its RNN on Copy and Repeat Copy "continuously and across episode boundaries": the state is
    not reset between episodes, so the truncation's chunk boundaries fall at every phase of an episode (in the
    input, at the delimiter, in the output) and the core must itself clear what one episode leaves behind. By
    default (`--episodes 1`) every training sequence is one episode from the zero state, its chunks aligned to
    its start. With `--episodes E` every training sequence is E episodes at the curriculum's current level,
    drawn one after the other from the training generator and concatenated along time (`CopySetup.stream`),
    and `train_sequence` trains it as one long sequence: the state is carried across the E − 1 episode
    boundaries, and chunks of T cross them wherever they fall (an episode's 2L + 1, or L + 1 + N·L + 1, steps
    are in general not a multiple of T, so the phase shifts from one episode to the next). Copy and Repeat
    Copy's two-axis curriculum: every episode at the same level (L; (L, N)). Repeat Copy's `length`
    curriculum: each episode draws its own N, as each batch does at E = 1 (one N per episode for the whole
    batch), so one sequence mixes several N.

    What stays the same: the curriculum's error is bits wrong per *episode* (`per_episode`): a sequence's bits
    wrong are divided by E, and so are the cost bits and the loss of the metric rows, so the threshold 0.15
    means what it means at E = 1. The window still counts batches (updates), each now of E episodes per
    sequence. Samples (`--max-samples`, `--log-every`, a row's `samples`) count episodes, B·E per update, so a
    budget in samples reads the same number of episodes at every E. At E = 1 all of this is today's run, bit
    for bit (the generator draws the same numbers in the same order).

    What it does not do: the stream still restarts from the zero state every E episodes (each sequence starts
    fresh and its first chunk starts at its first step; the paper's stream never restarts), so E = 8
    approximates the paper's endless stream, one episode boundary in 8 being a reset. As at E = 1, the last
    chunk of a sequence bootstraps no synthetic gradient, and λ-returns and true-gradient targets span the
    whole sequence. The evaluation of the final model stays single-episode ([Note: errors by position]).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from synthgrad import plots
from synthgrad.recurrent.bptt import TruncatedBPTT
from synthgrad.recurrent.budget import Budget
from synthgrad.recurrent.chunk import unroll
from synthgrad.recurrent.task_config import RecurrentConfig, RecurrentTask, RepeatCurriculum
from synthgrad.recurrent.tasks import (
    CopyTask,
    Curriculum,
    RepeatCopyTask,
    SequenceBatch,
    TwoAxisCurriculum,
    bce_step_loss,
    bit_errors_by_step,
    paper_score,
    sequence_bit_errors,
    sequence_cost_bits,
)

POSITION_SEQUENCES = 1_024  # fresh sequences for the bits wrong by output position ([Note: errors by position])


class CopySetup:
    """A Copy-task run's task, trainer and curriculum, built from its config (seeded) and restored from `saved`."""

    def __init__(self, cfg: RecurrentConfig, saved: dict | None) -> None:
        bits = cfg.item_bits
        self.task = CopyTask(bits) if cfg.task is RecurrentTask.COPY else RepeatCopyTask(cfg.max_repeats, bits)
        self.task_name, self.episodes = cfg.task, cfg.episodes
        torch.manual_seed(cfg.seed)
        core = cfg.core(self.task.input_size)
        readout = nn.Linear(cfg.hidden_size, self.task.output_size)
        boundary, aux = cfg.parts(core)
        self.trainer = TruncatedBPTT(
            core, readout, bce_step_loss, cfg.model_optimizer(), T=cfg.T, boundary=boundary, aux=aux, clip=cfg.clip
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.two_axes = isinstance(self.task, RepeatCopyTask) and cfg.repeat_curriculum is RepeatCurriculum.BOTH
        limits = {"threshold": cfg.curriculum_threshold, "window": cfg.curriculum_window}
        self.curriculum = (
            TwoAxisCurriculum(**limits, max_repeats=cfg.max_repeats) if self.two_axes else Curriculum(**limits)
        )
        self.sums = _zero_sums()
        if saved is not None:
            self.trainer.load_training_state(saved["training"])
            self.generator.set_state(saved["task"]["generator"])
            self.curriculum = type(self.curriculum).from_state_dict(saved["task"]["curriculum"])
            self.sums = saved["task"]["sums"]

    def sample(self, n: int, gen: torch.Generator) -> SequenceBatch:
        """n episodes at the curriculum's level."""
        c = self.curriculum
        if self.two_axes:
            return self.task.sample(n, c.length, c.repeats, gen)
        if isinstance(self.task, RepeatCopyTask):
            return self.task.sample(n, c.length, self.task.sample_repeats(gen), gen)
        return self.task.sample(n, c.length, gen)

    def stream(self, n: int, gen: torch.Generator) -> SequenceBatch:
        """n training sequences of `episodes` episodes each at the curriculum's level, back to back along time
        ([Note: continuous stream]); with one episode, `sample`'s batch itself."""
        if self.episodes == 1:
            return self.sample(n, gen)
        parts = [self.sample(n, gen) for _ in range(self.episodes)]
        return SequenceBatch(*(torch.cat([getattr(b, f) for b in parts]) for f in ("inputs", "targets", "mask")))

    def repeats(self) -> dict:
        """The two-axis curriculum's second axis, for a metric row."""
        c = self.curriculum
        return {"repeats": c.repeats, "output_length": c.size} if self.two_axes else {}

    def score_in_paper_units(self) -> int | None:
        """The largest level solved in the paper's units, N + 3 or N·R + 3 ([Note: paper score] in tasks.py); None
        for Repeat Copy's `length` curriculum, whose N is drawn per batch (no one episode length)."""
        if isinstance(self.task, RepeatCopyTask) and not self.two_axes:
            return None
        return paper_score(self.task_name, self.curriculum.max_solved)

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "curriculum": self.curriculum.state_dict(), "sums": self.sums}


def train_copy(cfg: RecurrentConfig, run: Budget, saved: dict | None) -> dict:
    """Train until the budget is spent; returns the task's part of the summary."""
    s = CopySetup(cfg, saved)
    while not run.exhausted():
        batch = s.stream(cfg.batch_size, s.generator)  # [Note: continuous stream]
        chunks = s.trainer.train_sequence(batch.inputs, batch.targets, batch.mask)
        loss = sum(c.loss for c in chunks)
        run.check_step(loss, "the training loss", s.trainer, steps=sum(c.steps for c in chunks))
        logits = torch.cat([c.outputs for c in chunks])  # (S, B, O), as predicted while training
        bits_wrong, cost = per_episode(logits, batch, cfg.episodes)  # [Note: curriculum error]
        s.curriculum.record(bits_wrong)
        sg = [c.sg_loss for c in chunks if c.sg_loss is not None]
        sums = s.sums
        for key, v in (("loss", float(loss) / cfg.episodes), ("bits", bits_wrong), ("cost", cost)):
            sums[key] += float(v)
        sums["n"] += 1
        sums["sg"], sums["n_sg"] = sums["sg"] + sum(sg), sums["n_sg"] + len(sg)
        run.postfix(length=s.curriculum.length, **s.repeats(), solved=s.curriculum.max_solved)
        if run.advance(cfg.batch_size * cfg.episodes):  # samples: episodes
            run.record(
                {
                    "length": s.curriculum.length,
                    **s.repeats(),
                    "max_length": s.curriculum.max_solved,
                    "paper_score": s.score_in_paper_units(),
                    "bit_errors": _mean(sums["bits"], sums["n"]),
                    "cost_bits": _mean(sums["cost"], sums["n"]),
                    "loss": _mean(sums["loss"], sums["n"]),
                    "sg_loss": _mean(sums["sg"], sums["n_sg"]),
                }
            )
            s.sums = _zero_sums()
            run.checkpoint(s.trainer.training_state(), s.state())
    run.checkpoint(s.trainer.training_state(), s.state())
    return _result(cfg, run, s)


def _result(cfg: RecurrentConfig, run: Budget, s: CopySetup) -> dict:
    """The summary's Copy part and the two figures."""
    c, title = s.curriculum, f"{cfg.task.value}, {cfg.method.value}, T={cfg.T}"
    current, what = ("output_length", "output vectors N·L") if s.two_axes else ("length", "sequence length")
    unit = "sequences" if cfg.episodes == 1 else "episodes"  # what the samples count ([Note: continuous stream])
    plots.curves(
        run.progress.history, run.out / "learning_curve.png", x="samples",
        ys=[(current, "current"), ("max_length", "max solved")], step=True, xlabel=unit, ylabel=what,
        title=title,
    )  # fmt: skip
    fresh = s.sample(POSITION_SEQUENCES, torch.Generator().manual_seed(cfg.seed + 1))
    result = {
        "max_length": c.max_solved,  # items: N (Copy), N·L or L (Repeat Copy, by its curriculum)
        "paper_score": s.score_in_paper_units(),  # the episode length ([Note: paper score] in tasks.py)
        "final_length": c.length,
        "item_bits": cfg.item_bits,
        "episodes": cfg.episodes,  # per training sequence ([Note: continuous stream])
        "bit_errors_by_position": errors_by_position(s.trainer, fresh),
    }
    level = f"L={c.length}, N={c.repeats}" if s.two_axes else f"length {c.length}"
    plots.bars(
        result["bit_errors_by_position"], run.out / "position_errors.png", xlabel="output step",
        ylabel="bits wrong per sequence", title=f"{title}, at {level}",
    )  # fmt: skip
    if isinstance(s.task, RepeatCopyTask):
        result["repeat_curriculum"] = cfg.repeat_curriculum.value
        result["score"] = "N·L, output vectors" if s.two_axes else "L, N uniform on 1..max_repeats"
    if s.two_axes:
        result["final_repeats"] = c.repeats
    error = "bits wrong per sequence" if cfg.episodes == 1 else "bits wrong per episode (per sequence / episodes)"
    return {**result, "curriculum_error": error, "curriculum_threshold": cfg.curriculum_threshold}


def per_episode(logits: Tensor, batch: SequenceBatch, episodes: int) -> tuple[float, float]:
    """The batch's mean bits wrong ([Note: curriculum error]) and cost bits per episode: each sequence's, divided
    by the `episodes` it holds ([Note: continuous stream])."""
    bits = sequence_bit_errors(logits, batch).mean().item() / episodes
    return bits, float(sequence_cost_bits(logits, batch).mean()) / episodes


def errors_by_position(trainer: TruncatedBPTT, batch: SequenceBatch) -> list[float]:
    """Bits wrong at each scored step of `batch`, run forward with the trainer's weights ([Note: errors by
    position])."""
    core, readout = trainer.core, trainer.readout
    with torch.no_grad():
        state = core.initial_state(batch.inputs.shape[1])
        _, _, preds, _ = unroll(core, readout, trainer.loss_fn, batch.inputs, batch.targets, state, batch.mask)
    return [round(v, 4) for v in bit_errors_by_step(torch.stack(preds), batch).tolist()]


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _zero_sums() -> dict:
    return {"n": 0, "loss": 0.0, "bits": 0.0, "cost": 0.0, "sg": 0.0, "n_sg": 0}
