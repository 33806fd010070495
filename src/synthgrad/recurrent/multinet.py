"""The two-network system of PAPER.md §5: network A reads a digit every step, network B ticks every T steps.

The exact task (our reconstruction: PAPER.md §5 gives only an outline; the counts and the T² horizon follow our
recollection of the DNI paper's Figure 6 caption, "Network A ... every T steps must output the number of 3s seen
... Network B ... must output the number of 3s seen over the last T² timesteps", which we could not check here):

    `batch_size` independent streams of MNIST training digits, one digit per step, drawn uniformly with
    replacement (`MultiNetTask`). An episode is T windows of T steps (T² steps); both networks start it from
    their zero state.
    Network A (a linear encoder 784 → 64 with a ReLU into an LSTM cell of `a_hidden` units, and a linear readout)
    reads the digit at every step. At the end of each window it outputs the number of 3s among the window's T
    digits (classes 0 … T, cross-entropy: A's own task) and sends its state h as the message m_k to B.
    Network B (an LSTM cell of `b_hidden` units and a linear readout) ticks once per window and sees only A's
    messages. At each tick it outputs the number of 3s since the episode began (classes 0 … T², cross-entropy);
    at its last tick that is the count over the last T² steps, the paper's quantity, and B's accuracy is
    scored there.

    locked (method "bptt"): B's loss at every tick depends on all earlier messages, so the exact gradient needs
        the joint system unrolled over the whole episode: A and B update together once per episode, every T²
        steps, on Σ_k (A's loss_k + B's loss_k) back-propagated through both networks (PAPER.md §5: "A is
        locked to B").
    DNI (method "dni"): a synthesizer M on the A→B message (linear, zero-initialised: PAPER.md §4's synthesizer)
        predicts the per-example gradient of B's episode loss Σ_k B's loss_k w.r.t. each message,
        ĝ_k = M(m_k). At the end of every window A back-propagates its own loss plus ĝ_k through the window (its
        state cut at the window start) and updates: every T steps, without waiting for B. B reads the
        (detached) messages and updates once per episode on the same loss as when locked; the true gradients
        B·∂(Σ B's losses)/∂m_k are then M's targets, and M takes one step on the mean of `synthesizer_loss`
        over the episode's T (message, gradient) pairs.

So only A's training differs: its updates come T times as often with the DNI, and it learns what B needs
through ĝ instead of the true gradient. `steps_to_target` (`train_multinet`) counts A-steps (digits read per
stream) until B's training accuracy at the episodes' last tick, averaged over the last `accuracy_window`
episodes, first reaches `target_accuracy`.

[Note: what the synthetic gradient adds here]
    A's own task already asks for the count B sums, so a DNI whose synthesizer stays at zero (A trained on its
    own task alone, every T steps) also helps B; `benchmarks/multinet.py` measures that variant beside the other
    two. On this task the speed-up comes from unlocking A's updates (T times as many), and the learned synthetic
    gradient costs A a little (measurements and the earlier definition of the task: reports/recurrent/notes.md,
    "Two networks").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthgrad.core import to_module_grad, to_synthesizer_units
from synthgrad.errors import ConfigError
from synthgrad.interface import Interface, TrueGradient
from synthgrad.optim import adam
from synthgrad.recurrent.boundary import RecurrentMethod
from synthgrad.recurrent.cells import LSTMCore, State
from synthgrad.recurrent.tasks import MultiNetBatch
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec

PIXELS = 28 * 28
EMBED = 64  # A's digit encoder width: enough for a linear read of the digit class, small next to the LSTM


class DigitReader(nn.Module):
    """Network A: Linear(784 → 64) + ReLU into an `LSTMCore`, and a readout of its own count (classes 0 … T)."""

    def __init__(self, hidden: int, classes: int, embed: int = EMBED, pixels: int = PIXELS) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, embed), nn.ReLU())
        self.lstm = LSTMCore(embed, hidden)
        self.readout = nn.Linear(hidden, classes)

    @property
    def output_size(self) -> int:
        return self.lstm.hidden_size

    def initial_state(self, batch: int) -> State:
        return self.lstm.initial_state(batch)

    def window(self, xs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """Read a window of digits xs (T, B, 784): (A's count logits (B, T + 1), message m = h (B, hidden),
        state (h, c))."""
        for x in xs:
            h, state = self.lstm.step(self.encoder(x), state)
        return self.readout(h), h, state


class Counter(nn.Module):
    """Network B: an `LSTMCore` on A's messages and a readout of the count since the episode began."""

    def __init__(self, message: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.lstm = LSTMCore(message, hidden)
        self.readout = nn.Linear(hidden, classes)

    def initial_state(self, batch: int) -> State:
        return self.lstm.initial_state(batch)

    def tick(self, message: Tensor, state: State) -> tuple[Tensor, State]:
        out, state = self.lstm.step(message, state)
        return self.readout(out), state


@dataclass
class EpisodeStats:
    """One episode: the loss of each network (summed over its ticks, batch means), how many streams each counted
    right at the last tick, and the clock at the end."""

    a_loss: float
    b_loss: float
    a_correct: int
    b_correct: int
    batch: int
    a_steps: int  # A-steps taken by the end of the episode
    sg_loss: float | None = None  # the synthesizer's loss (DNI)


def _step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _right(logits: Tensor, target: Tensor) -> int:
    return int((logits.argmax(1) == target).sum())


class MultiNetSystem(nn.Module):
    """Networks A and B, trained locked ("bptt") or with a DNI on the A→B message ("dni"); see the module doc.

    The DNI is an `Interface` on the message (`message`): a linear, zero-initialised synthesizer trained by Adam
    onto B's true gradient of each message (rule `TrueGradient()`). `a_steps` is the clock (A-steps taken),
    `a_updates` counts A's optimizer steps: a_updates = a_steps / T² when locked, a_steps / T with the DNI. B
    updates once per episode (every T² steps) either way.
    """

    def __init__(
        self,
        T: int,  # noqa: N803 - the paper's name
        *,
        method: RecurrentMethod | str,
        a_hidden: int,
        b_hidden: int,
        lr: float,
        synthesizer_lr: float | None = None,
    ) -> None:
        super().__init__()
        self.method = RecurrentMethod(method)
        if self.method is RecurrentMethod.DNI_AUX:
            raise ConfigError("the two-network system runs locked (--method bptt) or with a DNI (--method dni)")
        self.T = T
        self.a = DigitReader(a_hidden, T + 1)
        self.b = Counter(a_hidden, b_hidden, T * T + 1)
        self.message: Interface | None = None
        if self.method is RecurrentMethod.DNI:
            synthesizer = SynthesizerSpec(SynthesizerKind.LINEAR).build((a_hidden,))
            self.message = Interface(synthesizer, adam(synthesizer_lr or lr), rule=TrueGradient())
        self.a_optimizer = adam(lr)(self.a.parameters())
        self.b_optimizer = adam(lr)(self.b.parameters())
        self.a_steps = 0
        self.a_updates = 0

    @property
    def synthesizer(self) -> nn.Module | None:
        """The message interface's synthesizer M (None when locked)."""
        return self.message.synthesizer if self.message is not None else None

    @property
    def synthesizer_optimizer(self) -> torch.optim.Optimizer | None:
        return self.message.optimizer if self.message is not None else None

    def _windows(self, batch: MultiNetBatch) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(digits (T, B, 784), A's target (B,), B's target (B,)) for each window of the episode."""
        steps = batch.inputs.shape[0]
        assert steps == self.T * self.T, f"an episode is T² = {self.T * self.T} steps, got {steps}"
        for k in range(self.T):
            yield batch.inputs[k * self.T : (k + 1) * self.T], batch.a_counts[k], batch.b_counts[k]

    def train_episode(self, batch: MultiNetBatch) -> EpisodeStats:
        """Train on one episode (T² steps of `batch.inputs.shape[1]` streams)."""
        return self._episode_locked(batch) if self.message is None else self._episode_dni(batch)

    def _episode_locked(self, batch: MultiNetBatch) -> EpisodeStats:
        size = batch.inputs.shape[1]
        a_state, b_state = self.a.initial_state(size), self.b.initial_state(size)
        a_loss = b_loss = torch.zeros(())
        for xs, a_target, b_target in self._windows(batch):
            a_logits, message, a_state = self.a.window(xs, a_state)
            b_logits, b_state = self.b.tick(message, b_state)
            a_loss = a_loss + F.cross_entropy(a_logits, a_target)
            b_loss = b_loss + F.cross_entropy(b_logits, b_target)
            self.a_steps += self.T
        (a_loss + b_loss).backward()  # through B, the messages and all of A's T² steps: A waited for this
        _step(self.b_optimizer)
        _step(self.a_optimizer)
        self.a_updates += 1
        return EpisodeStats(
            a_loss.item(), b_loss.item(), _right(a_logits, a_target), _right(b_logits, b_target), size, self.a_steps
        )

    def _episode_dni(self, batch: MultiNetBatch) -> EpisodeStats:
        assert self.message is not None
        size = batch.inputs.shape[1]
        a_state, b_state = self.a.initial_state(size), self.b.initial_state(size)
        a_loss, sent, b_losses = 0.0, [], []
        for xs, a_target, b_target in self._windows(batch):
            a_logits, message, a_state = self.a.window(xs, a_state)
            own = F.cross_entropy(a_logits, a_target)
            with torch.no_grad():
                synthetic = self.message.predict(message.detach())  # ĝ_k (B, H), per-example units
            # A's update: its own loss and ĝ_k, through this window only; B has not seen m_k yet.
            self.a_steps += self.T
            torch.autograd.backward([own, message], [None, to_module_grad(synthetic)])
            _step(self.a_optimizer)
            self.a_updates += 1
            a_loss += own.item()
            a_state = tuple(s.detach() for s in a_state)
            leaf = message.detach().requires_grad_(True)  # where B's true gradient for m_k arrives
            b_logits, b_state = self.b.tick(leaf, b_state)
            b_losses.append(F.cross_entropy(b_logits, b_target))
            sent.append(leaf)
        b_loss = torch.stack(b_losses).sum()
        b_loss.backward()  # B's gradients, and ∂(Σ B's losses)/∂m_k in each leaf's .grad
        _step(self.b_optimizer)
        messages = torch.stack([m.detach() for m in sent])  # (T, B, H)
        targets = torch.stack([to_synthesizer_units(m.grad) for m in sent])  # B·∂L_B/∂m_k (T, B, H): M's targets
        # M reads detached messages, so its loss reaches M only; rows are (window, example) pairs: the mean over
        # the episode's windows of `synthesizer_loss` at each.
        sg_loss, _ = self.message.regress(self.message.predict(messages.flatten(0, 1)), targets.flatten(0, 1))
        return EpisodeStats(
            a_loss, b_loss.item(), _right(a_logits, a_target), _right(b_logits, b_target), size, self.a_steps, sg_loss
        )

    @torch.no_grad()
    def accuracy(self, batch: MultiNetBatch) -> tuple[int, int, int]:
        """(# streams A counted right at the last window, # B counted right at its last tick, # streams) on an
        episode, without training."""
        size = batch.inputs.shape[1]
        a_state, b_state = self.a.initial_state(size), self.b.initial_state(size)
        for xs, _, _ in self._windows(batch):
            a_logits, message, a_state = self.a.window(xs, a_state)
            b_logits, b_state = self.b.tick(message, b_state)
        return _right(a_logits, batch.a_counts[-1]), _right(b_logits, batch.b_counts[-1]), size

    def training_state(self) -> dict:
        return {
            "model": self.state_dict(),
            "optimizers": [self.a_optimizer.state_dict(), self.b_optimizer.state_dict()],
            "message": self.message.training_state() if self.message is not None else None,
            "a_steps": self.a_steps,
            "a_updates": self.a_updates,
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for opt, s in zip((self.a_optimizer, self.b_optimizer), state["optimizers"], strict=True):
            opt.load_state_dict(s)
        if self.message is not None:
            self.message.load_training_state(state["message"])
        self.a_steps, self.a_updates = state["a_steps"], state["a_updates"]


def moving_accuracy(recent: list[float], correct: float, window: int) -> list[float]:
    """The last `window` per-episode accuracies, `correct` (B's, at the episode's last tick) appended."""
    return [*recent, correct][-window:]


def at_target(recent: list[float], window: int, target: float) -> bool:
    """The definition of `steps_to_target`: a full window of episodes whose mean accuracy is at least `target`."""
    return len(recent) == window and sum(recent) / window >= target
