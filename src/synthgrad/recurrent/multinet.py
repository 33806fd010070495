"""The two-network system of PAPER.md §5: network A reads digits, network B ticks every T steps and counts.

The exact task (our reconstruction; the paper gives only its outline):
    `batch_size` independent streams of MNIST training digits, one digit per step, drawn uniformly with replacement
    (`MultiNetTask`). Window k is the steps kT … kT + T − 1. At every step t, network A (a linear encoder
    784 → 64 with a ReLU, into an LSTM cell of `a_hidden` units) reads that step's digit and sends the message
    m_t = h_t^A (B, a_hidden). Network B (an LSTM cell of `b_hidden` units and a linear readout) ticks once
    per window, at its last step, and sees only A's messages: its input is the sum of the window's T messages,
    Σ_t m_t (a count is a sum, and the sum does not care which step a digit came at). B outputs a
    classification over 0 … T, the number of odd digits among the window's T digits, trained with
    cross-entropy. A has no loss of its own: everything it learns comes from B. Streams are cut into episodes
    of `episode_windows` windows; both networks start an episode from their zero state. B is trained by truncated BPTT
    over one tick (its state is carried across ticks, not back-propagated through), identically in both modes,
    so only A's training differs:

    locked (method "bptt"): at B's tick, B's loss is back-propagated through B into the window's T messages
        and through A's T steps (A's state is cut at the window start). A cannot update before B has ticked:
        it updates once per window, every T steps.
    DNI (method "dni"): a synthesizer M on the A→B message (linear, zero-initialised: PAPER.md §4's
        synthesizer) predicts the per-example gradient of B's loss w.r.t. each message, ĝ_t = M(m_t). At every
        step A back-propagates ĝ_t through that step (its state cut at the step's start) and updates: A never
        waits for B. When B ticks, the true gradients B·∂L_k/∂m_t of the window's T messages are M's targets:
        M takes one step on the mean of `synthesizer_loss` over the T (message, gradient) pairs.

`steps_to_target` (see `synthgrad.recurrent.train`) counts A-steps (digits read per stream) until B's training
accuracy, averaged over its last `accuracy_window` ticks, first reaches `target_accuracy` (90% by default).

[Note: what the DNI can learn here]
    M sees one message, so it can only predict the gradient *expected* given that one digit; the other T − 1
    digits of the window make the true gradient noisy around it. Measured (defaults: 64 units, batch 32, lr
    1e-3, one thread, 24 s each): locked reached 90% at 6,056 A-steps (98.7% at 47k); the DNI was at 52% after
    32k A-steps (32k A updates), and a synthesizer learning 10× faster did not help. Conditioning M on the
    window's count (cDNI, PAPER.md §2; not implemented here) reached 76% at 4.8k and 87% at 20k A-steps in a
    probe. An earlier design in which B read only the tick's message and M sat on A's whole state with
    bootstrapped targets did not learn at all (chance, 37%, after 27k A-steps). The paper's "A learns much
    faster" may rest on details it does not give (e.g. a task of A's own); the reproduction should say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthgrad.core import backward_through, synthesizer_loss, to_module_grad
from synthgrad.decoupled import adam
from synthgrad.errors import ConfigError
from synthgrad.recurrent.core import LSTMCore, RecurrentMethod, State
from synthgrad.recurrent.run import Session, plot_curves
from synthgrad.recurrent.tasks import MultiNetBatch, MultiNetTask
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec

if TYPE_CHECKING:
    from synthgrad.data import ImageDataset
    from synthgrad.recurrent.train import RecurrentConfig

PIXELS = 28 * 28
EMBED = 64  # A's digit encoder width: enough for a linear read of the digit class, small next to the LSTM


class DigitReader(nn.Module):
    """Network A: Linear(784 → 64) + ReLU into an `LSTMCore`; state (h, c), each (B, hidden); message h."""

    def __init__(self, hidden: int, embed: int = EMBED, pixels: int = PIXELS) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, embed), nn.ReLU())
        self.lstm = LSTMCore(embed, hidden)

    @property
    def output_size(self) -> int:
        return self.lstm.hidden_size

    def initial_state(self, batch: int) -> State:
        return self.lstm.initial_state(batch)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """x_t (B, 784) -> (message m_t = h (B, hidden), (h, c))."""
        return self.lstm.step(self.encoder(x_t), state)


@dataclass
class TickStats:
    """One tick of B: its loss, how many of the batch it counted right, and the clock at the tick."""

    loss: float
    correct: int
    batch: int
    a_steps: int  # A-steps taken when B ticked
    sg_loss: float | None = None  # the synthesizer's loss at this tick (DNI)


def _step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class MultiNetSystem(nn.Module):
    """Networks A and B, trained locked ("bptt") or with a DNI on the A→B message ("dni"); see the module doc.

    `a_steps` is the clock (A-steps taken), `a_updates` counts A's optimizer steps: a_updates = a_steps / T when
    locked, = a_steps with the DNI.
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
        self.a = DigitReader(a_hidden)
        self.b = LSTMCore(a_hidden, b_hidden)
        self.b_readout = nn.Linear(b_hidden, T + 1)
        dni = self.method is RecurrentMethod.DNI
        self.synthesizer = SynthesizerSpec(SynthesizerKind.LINEAR).build((a_hidden,)) if dni else None
        self.a_optimizer = adam(lr)(self.a.parameters())
        self.b_optimizer = adam(lr)([*self.b.parameters(), *self.b_readout.parameters()])
        self.synthesizer_optimizer = adam(synthesizer_lr or lr)(self.synthesizer.parameters()) if dni else None
        self.a_steps = 0
        self.a_updates = 0

    def train_episode(self, batch: MultiNetBatch) -> list[TickStats]:
        """Train on one episode: inputs (W·T, B, 784), counts (W, B); one `TickStats` per window."""
        steps, size = batch.inputs.shape[:2]
        windows = steps // self.T
        assert windows * self.T == steps and batch.counts.shape[0] == windows, "an episode is whole windows"
        a_state, b_state = self.a.initial_state(size), self.b.initial_state(size)
        window = self._window_locked if self.synthesizer is None else self._window_dni
        ticks = []
        for k in range(windows):
            xs, count = batch.inputs[k * self.T : (k + 1) * self.T], batch.counts[k]  # (T, B, 784), (B,)
            a_state, b_state, stats = window(xs, count, a_state, b_state)
            ticks.append(stats)
        return ticks

    def _tick(self, messages: Tensor, b_state: State, count: Tensor) -> tuple[Tensor, int, State]:
        """B reads the window's messages (B, T, a_hidden): (its loss with graph, # counted right, next state)."""
        out, b_next = self.b.step(messages.sum(1), b_state)  # input Σ_t m_t (B, a_hidden)
        logits = self.b_readout(out)  # (B, T + 1)
        loss = F.cross_entropy(logits, count)
        correct = int((logits.argmax(1) == count).sum())
        return loss, correct, tuple(s.detach() for s in b_next)

    def _window_locked(
        self, xs: Tensor, count: Tensor, a_state: State, b_state: State
    ) -> tuple[State, State, TickStats]:
        state, messages = a_state, []  # a_state is detached: A's truncation is the window
        for x in xs:
            message, state = self.a.step(x, state)
            messages.append(message)
            self.a_steps += 1
        loss, correct, b_state = self._tick(torch.stack(messages, 1), b_state, count)
        loss.backward()  # through B, the messages and A's T steps: A waited for this
        _step(self.b_optimizer)
        _step(self.a_optimizer)
        self.a_updates += 1
        stats = TickStats(loss.item(), correct, count.shape[0], self.a_steps)
        return tuple(s.detach() for s in state), b_state, stats

    def _window_dni(self, xs: Tensor, count: Tensor, a_state: State, b_state: State) -> tuple[State, State, TickStats]:
        assert self.synthesizer is not None and self.synthesizer_optimizer is not None
        state, messages = a_state, []
        for x in xs:
            message, state = self.a.step(x, state)  # (B, H), with graph to this step only
            with torch.no_grad():
                synthetic = self.synthesizer(message.detach())  # ĝ_t (B, H), per-example units
            backward_through(message, to_module_grad(synthetic), None)  # A's update from ĝ_t: no waiting for B
            self.a_steps += 1
            _step(self.a_optimizer)
            self.a_updates += 1
            messages.append(message.detach())
            state = tuple(s.detach() for s in state)
        sent = torch.stack(messages, 1).requires_grad_(True)  # (B, T, H): the leaf B's gradient arrives at
        loss, correct, b_state = self._tick(sent, b_state, count)
        target = backward_through(loss, None, sent)  # B's gradients, and B·∂L_k/∂m_t (B, T, H): M's targets
        _step(self.b_optimizer)
        # M reads detached messages: its loss reaches M only. Rows are (example, step) pairs, so the loss is the
        # mean over the window's steps of `synthesizer_loss` at each step.
        sg_loss = synthesizer_loss(self.synthesizer(sent.detach().flatten(0, 1)), target.flatten(0, 1))
        sg_loss.backward()
        _step(self.synthesizer_optimizer)
        stats = TickStats(loss.item(), correct, count.shape[0], self.a_steps, sg_loss.item())
        return state, b_state, stats

    @torch.no_grad()
    def accuracy(self, batch: MultiNetBatch) -> tuple[int, int]:
        """(# windows counted right, # windows) on an episode, without training."""
        steps, size = batch.inputs.shape[:2]
        a_state, b_state = self.a.initial_state(size), self.b.initial_state(size)
        correct, messages = 0, []
        for t in range(steps):
            message, a_state = self.a.step(batch.inputs[t], a_state)
            messages.append(message)
            if (t + 1) % self.T == 0:
                _, right, b_state = self._tick(torch.stack(messages, 1), b_state, batch.counts[t // self.T])
                correct, messages = correct + right, []
        return correct, batch.counts.numel()

    def training_state(self) -> dict:
        opts = (self.a_optimizer, self.b_optimizer, self.synthesizer_optimizer)
        return {
            "model": self.state_dict(),
            "optimizers": [o.state_dict() if o is not None else None for o in opts],
            "a_steps": self.a_steps,
            "a_updates": self.a_updates,
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        opts = (self.a_optimizer, self.b_optimizer, self.synthesizer_optimizer)
        for opt, s in zip(opts, state["optimizers"], strict=True):
            if opt is not None:
                opt.load_state_dict(s)
        self.a_steps, self.a_updates = state["a_steps"], state["a_updates"]


# ---------------------------------------------------------------------------------------------- the training loop
def train_multinet(cfg: RecurrentConfig, session: Session, dataset: ImageDataset, ckpt: dict | None) -> dict:
    """Train the system on episodes from the training digits until the budget is spent; returns the task's
    part of the summary. A sample is one digit read by A (B per A-step); a row every `cfg.log_every` samples."""
    task = MultiNetTask.from_dataset(dataset, split="train", T=cfg.T)
    torch.manual_seed(cfg.seed)
    system = MultiNetSystem(
        cfg.T, method=cfg.method, a_hidden=cfg.hidden_size, b_hidden=cfg.hidden_size, lr=cfg.lr,
        synthesizer_lr=cfg.synthesizer_lr,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(cfg.seed)
    st: dict = {"recent": [], "steps_to_target": None, "sums": _zero_sums()}
    if ckpt is not None:
        system.load_training_state(ckpt["training"])
        st = ckpt["task"]
        generator.set_state(st.pop("generator"))
    while not session.exhausted():
        batch = task.sample(cfg.batch_size, cfg.episode_windows, generator)
        for tick in system.train_episode(batch):
            session.check_finite(tick.loss, "B's loss")
            st["recent"] = [*st["recent"], tick.correct / tick.batch][-cfg.accuracy_window :]
            moving = sum(st["recent"]) / len(st["recent"])
            reached = len(st["recent"]) == cfg.accuracy_window and moving >= cfg.target_accuracy
            if st["steps_to_target"] is None and reached:
                st["steps_to_target"] = tick.a_steps
            sums = st["sums"]
            sums["ticks"] += 1
            sums["loss"] += tick.loss
            if tick.sg_loss is not None:
                sums["sg_loss"] += tick.sg_loss
        session.postfix(acc=f"{moving:.3f}")
        if session.advance(batch.inputs.shape[0] * batch.inputs.shape[1]):
            n = st["sums"]["ticks"]
            session.record(
                {
                    "a_steps": system.a_steps,
                    "a_updates": system.a_updates,
                    "accuracy": moving,
                    "loss": st["sums"]["loss"] / n,
                    "sg_loss": st["sums"]["sg_loss"] / n if system.synthesizer is not None else None,
                }
            )
            st["sums"] = _zero_sums()
            session.checkpoint(system.training_state(), {**st, "generator": generator.get_state()})
    session.checkpoint(system.training_state(), {**st, "generator": generator.get_state()})
    test = MultiNetTask.from_dataset(dataset, split="test", T=cfg.T)
    test_gen = torch.Generator().manual_seed(cfg.seed + 1)
    counts = [system.accuracy(test.sample(cfg.batch_size, cfg.episode_windows, test_gen)) for _ in range(TEST_EPISODES)]
    history = session.progress.history
    plot_curves(
        history, session.out / "learning_curve.png", x="a_steps", ys=[("accuracy", "B's accuracy (moving)")],
        xlabel="A steps", ylabel=f"accuracy over the last {cfg.accuracy_window} ticks",
        title=f"two networks, {cfg.method.value}, T={cfg.T}",
    )  # fmt: skip
    return {
        "steps_to_target": st["steps_to_target"],
        "target_accuracy": cfg.target_accuracy,
        "accuracy_window": cfg.accuracy_window,
        "final_accuracy": sum(st["recent"]) / len(st["recent"]) if st["recent"] else None,
        "test_accuracy": sum(c for c, _ in counts) / sum(n for _, n in counts),
        "a_steps": system.a_steps,
        "a_updates": system.a_updates,
    }


TEST_EPISODES = 10  # test-split episodes of `batch_size` streams scored at the end (a few thousand windows)


def _zero_sums() -> dict:
    return {"ticks": 0, "loss": 0.0, "sg_loss": 0.0}
