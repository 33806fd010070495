"""Recurrent tasks of PAPER.md §4–5, generated on the fly from a `torch.Generator`.

Copy and Repeat Copy follow the Neural Turing Machine paper (Graves et al. 2014); their batches are
`SequenceBatch` (time-major tensors and a mask that is 1 exactly where the output is scored), and a batch is
scored in bits per sequence. `Curriculum` is the length schedule of PAPER.md §4, and `paper_score` turns its
score (items) into the paper's table units (the episode length, [Note: paper score]). Penn Treebank character
level reads Mikolov's files; `MultiNetTask` is the data of the two-network system (PAPER.md §5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthgrad.data.mnist import ImageDataset
from synthgrad.data.ptb import PTB_SPLITS, CharCorpus, load_ptb_chars, ptb_char_path, read_char_symbols  # noqa: F401
from synthgrad.errors import ConfigError, DataError
from synthgrad.recurrent.cells import RecurrentCore
from synthgrad.recurrent.task_config import RecurrentTask

BITS = 8  # width of the random binary vectors (NTM paper); the Copy tasks' default (`--item-bits`)
LN2 = math.log(2.0)


@dataclass(frozen=True)
class SequenceBatch:
    """inputs (S, B, I) float, targets (S, B, O) float in {0, 1}, mask (S, B) float: 1 where scored."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")


def _random_bits(length: int, batch: int, generator: torch.Generator, bits: int = BITS) -> Tensor:
    return torch.randint(0, 2, (length, batch, bits), generator=generator).float()  # (L, B, bits)


class CopyTask:
    """Copy (NTM): L random 8-bit vectors, then a delimiter flag, then L output steps to reproduce them.

    Input channels 8 + 1 (bits, delimiter); S = 2L + 1 steps; the input is 0 during the output phase; targets
    (S, B, 8) hold the sequence in the last L steps and are scored (mask 1) only there. `bits` sets the width of
    the vectors (`--item-bits`; 8 by default, the NTM paper's): channels bits + 1 in, bits out.
    """

    input_size = BITS + 1  # the default width's; an instance holds its own
    output_size = BITS

    def __init__(self, bits: int = BITS) -> None:
        _check_positive(bits=bits)
        self.bits, self.input_size, self.output_size = bits, bits + 1, bits

    def sample(self, batch: int, length: int, generator: torch.Generator) -> SequenceBatch:
        _check_positive(batch=batch, length=length)
        B = self.bits  # noqa: N806
        bits = _random_bits(length, batch, generator, B)
        steps = 2 * length + 1
        inputs = torch.zeros(steps, batch, self.input_size)
        inputs[:length, :, :B] = bits
        inputs[length, :, B] = 1.0  # delimiter
        targets = torch.zeros(steps, batch, self.output_size)
        targets[length + 1 :] = bits
        mask = torch.zeros(steps, batch)
        mask[length + 1 :] = 1.0
        return SequenceBatch(inputs, targets, mask)


class RepeatCopyTask:
    """Repeat Copy (NTM): L random 8-bit vectors, then a step carrying a delimiter flag and the number of repeats
    N on its own channel; the output is the sequence N times, then an end marker.

    Input channels 8 + 2 (bits, delimiter, normalised N); output channels 8 + 1 (bits, end marker). S = L + 1 +
    N·L + 1 steps, scored over the last N·L + 1. N is normalised to mean 0 and variance 1 over the uniform
    distribution on 1..max_repeats, as in the NTM paper. N is the same for the whole batch. `bits` sets the width
    of the vectors (`--item-bits`, 8 by default): channels bits + 2 in, bits + 1 out.
    """

    input_size = BITS + 2  # the default width's; an instance holds its own
    output_size = BITS + 1

    def __init__(self, max_repeats: int = 10, bits: int = BITS) -> None:
        _check_positive(max_repeats=max_repeats, bits=bits)
        self.max_repeats, self.bits = max_repeats, bits
        self.input_size, self.output_size = bits + 2, bits + 1

    def normalised_repeats(self, repeats: int) -> float:
        mean = (self.max_repeats + 1) / 2
        std = math.sqrt((self.max_repeats**2 - 1) / 12) or 1.0
        return (repeats - mean) / std

    def sample_repeats(self, generator: torch.Generator) -> int:
        """N uniform on 1..max_repeats."""
        return int(torch.randint(1, self.max_repeats + 1, (), generator=generator))

    def sample(self, batch: int, length: int, repeats: int, generator: torch.Generator) -> SequenceBatch:
        _check_positive(batch=batch, length=length, repeats=repeats)
        B = self.bits  # noqa: N806
        bits = _random_bits(length, batch, generator, B)
        start, steps = length + 1, length + 1 + repeats * length + 1
        inputs = torch.zeros(steps, batch, self.input_size)
        inputs[:length, :, :B] = bits
        inputs[length, :, B] = 1.0  # delimiter
        inputs[length, :, B + 1] = self.normalised_repeats(repeats)
        targets = torch.zeros(steps, batch, self.output_size)
        targets[start : steps - 1, :, :B] = bits.repeat(repeats, 1, 1)  # (N·L, B, bits)
        targets[steps - 1, :, B] = 1.0  # end marker
        mask = torch.zeros(steps, batch)
        mask[start:] = 1.0
        return SequenceBatch(inputs, targets, mask)


def bce_step_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example binary cross-entropy in nats, summed over channels: (B, O), (B, O) -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)


def sequence_bit_errors(logits: Tensor, batch: SequenceBatch) -> Tensor:
    """Wrongly predicted bits per sequence (output > 0.5 vs target) over the scored steps: (S, B, O) -> (B,)."""
    wrong = ((logits > 0).float() != batch.targets).float() * batch.mask[..., None]
    return wrong.sum((0, 2))


def bit_errors_by_step(logits: Tensor, batch: SequenceBatch) -> Tensor:
    """Wrongly predicted bits at each scored step, averaged over the batch, in time order: (S, B, O) -> (K,) for
    the K steps scored in every sequence (the whole output phase of a batch of one length)."""
    scored = batch.mask.bool().all(dim=1)  # (S,)
    wrong = ((logits[scored] > 0).float() != batch.targets[scored]).float()  # (K, B, O)
    return wrong.sum(2).mean(1)


def sequence_cost_bits(logits: Tensor, batch: SequenceBatch) -> Tensor:
    """Binary cross-entropy in bits per sequence over the scored steps (the NTM paper's cost): -> (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none") * batch.mask[..., None]
    return bce.sum((0, 2)) / LN2


@dataclass
class Curriculum:
    """Sequence-length curriculum of PAPER.md §4: the length starts at `length` (1) and grows by one as soon as
    the mean of the last `window` recorded errors (bits per sequence) is below `threshold` (0.15); the window
    restarts at every new length, so only errors at the current length count.

    `max_solved` is the largest length at which the criterion was met (0 before any); `score` reports it, the
    paper's "max sequence length solved". The state is a plain dict (`state_dict`).
    """

    threshold: float = 0.15  # bits per sequence, PAPER.md §4
    window: int = 10  # recorded batch errors averaged (our choice; the paper does not give it)
    length: int = 1
    max_solved: int = 0
    errors: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_positive(window=self.window, length=self.length)
        if not self.threshold > 0:
            raise ConfigError(f"curriculum threshold must be > 0, got {self.threshold}")

    @property
    def score(self) -> int:
        return self.max_solved

    @property
    def size(self) -> int:
        """What the score counts at the current level: here the length."""
        return self.length

    def record(self, error: float) -> bool:
        """Record one batch's mean error per sequence; returns True when the level has just grown."""
        self.errors = [*self.errors, float(error)][-self.window :]
        if len(self.errors) == self.window and sum(self.errors) / self.window < self.threshold:
            self.max_solved = max(self.max_solved, self.size)
            self._grow()
            self.errors = []
            return True
        return False

    def _grow(self) -> None:
        self.length += 1

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> Curriculum:
        return cls(**state)


@dataclass
class TwoAxisCurriculum(Curriculum):
    """Repeat Copy's curriculum on both axes ([Note: Repeat Copy curriculum] in copy_loop.py): the length L and the
    number of repeats N start at 1 and grow in turn, L first — (1, 1), (2, 1), (2, 2), (3, 2), … — with N held
    at `max_repeats` once it gets there; the score is the largest N·L solved (the vectors in the output).
    """

    repeats: int = 1
    max_repeats: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(repeats=self.repeats, max_repeats=self.max_repeats)

    @property
    def size(self) -> int:
        return self.length * self.repeats

    def _grow(self) -> None:
        if self.repeats < min(self.length, self.max_repeats):
            self.repeats += 1
        else:
            self.length += 1


# [Note: paper score]
#     The paper's Copy / Repeat Copy table (PAPER.md §4) counts the episode length T_task = N + 3 (Copy) and
#     N·R + 3 (Repeat Copy), not the item count N (A: inferred from the table's arithmetic; PAPER.md recalls the
#     paper's wording). The paper's N is our length L, its R our repeats N. The evidence: a Repeat Copy
#     curriculum that grows N and R in turn from (1, 1) (`TwoAxisCurriculum`) passes through the products
#     N·R = 1, 2, 4, 6, 9, 12, 16, 20, 25, 30, 36, 42, 49, 56; plus 3 that is {4, 5, 7, 9, 12, 15, 19, 23, 28,
#     33, 39, 45, 52, 59}, which holds all eight of the paper's Repeat Copy entries (7, 5, 19, 23, 39, 33, 39,
#     59; 59 = 8·7 + 3), while with + 0, + 1 or + 2 at most two of them lie in the shifted set. Copy's entries
#     (7, 8, 10, 8, 16, 14, 18, 18) have both parities, which fits N + 3 and not 2N + c. Our runs keep
#     `max_length` in items (N; N·R for Repeat Copy's two-axis curriculum) and add `paper_score`;
#     tests/test_recurrent_paper_score.py pins the arithmetic.
PAPER_SCORE_OFFSET = 3  # T_task = items + 3 ([Note: paper score])


def paper_score(task: RecurrentTask | str, max_length: int, repeats: int | None = None) -> int:
    """The paper's table number for a Copy or Repeat Copy run that solved `max_length` ([Note: paper score]).

    Copy: `max_length` is N, the items to copy; the score is N + 3. Repeat Copy: with `repeats` None,
    `max_length` is already the items in the output, N·R (the score of `TwoAxisCurriculum`); with `repeats` R
    given, `max_length` is the sequence length N and the output holds N·R items. The score is N·R + 3. A run
    that solved nothing (`max_length` 0) scores 0 in both units.
    """
    task = RecurrentTask(task)
    if task not in (RecurrentTask.COPY, RecurrentTask.REPEAT_COPY):
        raise ConfigError(f"the paper's score is the Copy and Repeat Copy tasks', not {task.value}'s")
    if repeats is not None and task is RecurrentTask.COPY:
        raise ConfigError("Copy has no repeats")
    _check_positive(**({} if repeats is None else {"repeats": repeats}))
    if not isinstance(max_length, int) or max_length < 0:
        raise ConfigError(f"max_length must be an integer >= 0, got {max_length!r}")
    items = max_length * (repeats or 1)
    return items + PAPER_SCORE_OFFSET if items else 0


# ---------------------------------------------------------------------------------------------- Penn Treebank
def batchify(stream: Tensor, batch: int) -> Tensor:
    """(N,) -> (B, N // B): B contiguous streams, the tail that does not fill a row dropped."""
    _check_positive(batch=batch)
    n = stream.shape[0] // batch
    if n < 2:
        raise ConfigError(f"a stream of {stream.shape[0]} symbols is too short for {batch} rows")
    return stream[: n * batch].view(batch, n)


def stream_chunks(data: Tensor, T: int, vocab_size: int) -> Iterator[tuple[Tensor, Tensor]]:  # noqa: N803
    """Consecutive chunks of a batchified stream (B, N) for TBPTT: inputs (T', B, V) one-hot float, targets
    (T', B) the next symbols; T' = T except maybe the last chunk. The state carries across chunks."""
    _check_positive(T=T)
    for lo in range(0, data.shape[1] - 1, T):
        hi = min(lo + T, data.shape[1] - 1)
        x = data[:, lo:hi].t()  # (T', B)
        yield F.one_hot(x, vocab_size).float(), data[:, lo + 1 : hi + 1].t()


def char_step_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example cross-entropy in nats: (B, V), (B,) -> (B,)."""
    return F.cross_entropy(logits, target, reduction="none")


def bits_per_character(logits: Tensor, targets: Tensor) -> float:
    """Mean cross-entropy in bits: logits (..., V), targets (...) -> nats / ln 2."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten()).item() / LN2


@torch.no_grad()
def evaluate_bpc(core: RecurrentCore, readout: nn.Module, data: Tensor, vocab_size: int, chunk: int = 200) -> float:
    """Bits per character of `readout ∘ core` over a batchified stream (B, N), state carried from the start."""
    state, nats, count = core.initial_state(data.shape[0]), 0.0, 0
    like = state[0]  # one-hot inputs in the core's dtype and device
    for x, y in stream_chunks(data, chunk, vocab_size):
        x, y = x.to(like), y.to(like.device)
        for t in range(x.shape[0]):
            out, state = core.step(x[t], state)
            nats += F.cross_entropy(readout(out), y[t], reduction="sum").item()
            count += y.shape[1]
    return nats / count / LN2


# ---------------------------------------------------------------------------------------------- two networks
@dataclass(frozen=True)
class MultiNetBatch:
    """One episode of the two-network system, for B streams of S = T² steps.

    inputs (S, B, 784) flattened digits; digits (S, B) their labels; a_counts (T, B) A's targets, the number of
    3s in each window of T steps; b_counts (T, B) B's targets, the number of 3s since the episode began, at the
    end of each window (the last one is the count over the episode's T² steps).
    """

    inputs: Tensor
    digits: Tensor
    a_counts: Tensor
    b_counts: Tensor


class MultiNetTask:
    """The two-network system's data (PAPER.md §5), as we define it (see `synthgrad.recurrent.multinet`).

    An episode has T windows of T steps (S = T² steps). At every step network A reads one MNIST image drawn
    uniformly with replacement from the split, flattened to 784 values in [0, 1]. At the end of window k, A
    must output the number of 3s among the window's T digits (classes 0 … T) and network B, ticking once per
    window, must output the number of 3s since the episode began (classes 0 … T²).
    """

    COUNTED = 3  # the digit both networks count

    def __init__(self, images: Tensor, labels: Tensor, T: int = 4) -> None:  # noqa: N803
        _check_positive(T=T)
        if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
            raise DataError(f"{images.shape[0]} images vs {labels.shape[0]} labels")
        self.images, self.labels, self.T = images.flatten(1), labels, T

    @classmethod
    def from_dataset(cls, dataset: ImageDataset, *, split: str = "train", T: int = 4) -> MultiNetTask:  # noqa: N803
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        return cls(getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels"), T)

    @property
    def a_classes(self) -> int:
        return self.T + 1

    @property
    def b_classes(self) -> int:
        return self.T * self.T + 1

    def sample(self, batch: int, generator: torch.Generator) -> MultiNetBatch:
        """One episode of `batch` streams."""
        _check_positive(batch=batch)
        idx = torch.randint(0, self.images.shape[0], (self.T * self.T, batch), generator=generator)  # (S, B)
        digits = self.labels[idx]
        a_counts = (digits == self.COUNTED).view(self.T, self.T, batch).sum(1)  # (T, B)
        return MultiNetBatch(self.images[idx], digits, a_counts, a_counts.cumsum(0))
