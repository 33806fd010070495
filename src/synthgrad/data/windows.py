"""Contiguous windows of a token stream, the batches of a language model.

A split's ids (N,) are cut into non-overlapping windows of T + 1 ids that share their boundary id: window i reads
ids[i·T : i·T + T + 1], its inputs are the first T and its targets the last T (the inputs shifted by one). Every
id but the first is a target exactly once, and there are (N − 1) // T windows; the last (N − 1) % T targets
form a shorter *tail* window, which evaluation may score too (`sequential(tail=True)`).

Training reads the windows of an epoch in a random order that is a pure function of (seed, epoch): batch k of
a run is `train_batch(k, batch_size, seed)`, so every process of a pipeline derives the same batches from the
step number alone, and a resumed run continues with the batches it would have read. Evaluation reads the
windows in order. The train / valid / test split is the corpus's (for Penn Treebank, Mikolov's three files).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from synthgrad.data.ptb import Corpus
from synthgrad.errors import ConfigError

Batch = tuple[Tensor, Tensor]  # inputs (B, T) and targets (B, T), int64


@dataclass(frozen=True)
class Windows:
    """The windows of length `context` + 1 of one split's ids (see the module doc).

    Args:
        ids: (N,) token ids of an integer type.
        context: T, the model's input length.
        name: the split's name, for error messages.
    """

    ids: Tensor
    context: int
    name: str = "data"

    def __post_init__(self) -> None:
        if self.ids.dim() != 1 or self.ids.is_floating_point():
            raise ConfigError(f"{self.name}: expected a 1-D tensor of token ids, got {tuple(self.ids.shape)}")
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 1:
            raise ConfigError(f"context must be an integer >= 1, got {self.context!r}")
        targets = self.ids.numel() - 1
        if self.context > targets:
            raise ConfigError(
                f"context {self.context} is longer than the {self.name} split, whose {self.ids.numel()} tokens "
                f"give {max(targets, 0)} targets"
            )

    def __len__(self) -> int:
        """The number of full windows, (N − 1) // T."""
        return (self.ids.numel() - 1) // self.context

    @property
    def tokens(self) -> int:
        """Targets in the split, N − 1 (the full windows' len·T plus the tail's)."""
        return self.ids.numel() - 1

    def batch(self, indices: Tensor | Sequence[int]) -> Batch:
        """Windows `indices` (B,) stacked: inputs (B, T), targets (B, T)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.dim() != 1 or (idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < len(self)):
            raise IndexError(f"window indices must lie in [0, {len(self)}), got {idx.tolist()}")
        t = self.context
        rows = self.ids[idx[:, None] * t + torch.arange(t + 1)]  # (B, T + 1)
        return rows[:, :-1], rows[:, 1:]

    # ------------------------------------------------------------------ training: a random order per epoch
    def order(self, epoch: int, seed: int) -> Tensor:
        """A permutation (len,) of the windows, a pure function of (seed, epoch)."""
        state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randperm(len(self), generator=generator)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches of distinct windows in an epoch (the remaining len % B windows wait for another epoch)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
        if batch_size > len(self):
            raise ConfigError(
                f"batch size {batch_size} is more than the {len(self)} windows of {self.context} tokens in the "
                f"{self.name} split"
            )
        return len(self) // batch_size

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """Batch `step` (counted from 0 over the whole run) of a run with `seed`: batch step % E of epoch
        step // E, E = `batches_per_epoch`, in that epoch's `order`."""
        per_epoch = self.batches_per_epoch(batch_size)
        epoch, k = divmod(step, per_epoch)
        return self.batch(self.order(epoch, seed)[k * batch_size : (k + 1) * batch_size])

    def epoch(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        """The full batches of one epoch, in order (the same as `train_batch` for its steps)."""
        order = self.order(epoch, seed)
        for k in range(self.batches_per_epoch(batch_size)):
            yield self.batch(order[k * batch_size : (k + 1) * batch_size])

    # ------------------------------------------------------------------ evaluation: every target once, in order
    def sequential(self, batch_size: int, *, tail: bool = True) -> Iterator[Batch]:
        """The windows in order, `batch_size` at a time (the last batch may be smaller); with `tail`, then the
        (1, r) window of the r = (N − 1) % T targets after the last full window, so that the batches hold every
        target of the split exactly once. Sum the token losses and divide by `tokens` for the split's mean."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
        n = len(self)
        for start in range(0, n, batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, n)))
        r = self.tokens - n * self.context
        if tail and r:
            rest = self.ids[n * self.context :]  # (r + 1,)
            yield rest[None, :-1], rest[None, 1:]


@dataclass(frozen=True)
class SplitWindows:
    """The windows of the fixed train / valid / test split of a corpus."""

    train: Windows
    valid: Windows
    test: Windows

    @classmethod
    def of(cls, train: Tensor, valid: Tensor, test: Tensor, context: int) -> SplitWindows:
        """Windows of `context` + 1 ids over each split; ConfigError if a split is too short for `context`."""
        return cls(Windows(train, context, "train"), Windows(valid, context, "valid"), Windows(test, context, "test"))

    @classmethod
    def from_corpus(cls, corpus: Corpus, context: int) -> SplitWindows:
        """`of` the corpus's three splits (e.g. `synthgrad.data.ptb.load_ptb("ptb-char", data_dir)`)."""
        return cls.of(corpus.train, corpus.valid, corpus.test, context)
