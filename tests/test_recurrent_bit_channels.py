"""Issue #20, evidence (2): truncated BPTT at T = 2 on Copy never trains how items are written.

Copy's inputs (`CopyTask`): channels 0–7 carry the item bits at t < N, channel 8 the delimiter at t = N, and the
loss is scored at t ≥ N + 1. A chunk of two steps cannot hold both an item step and a scored step (the delimiter
step lies between them), whatever its phase, so truncated BPTT at T = 2 sends no gradient to the LSTM's input
weights of the bit channels: `weight_ih[:, :8]` stays at its initialisation, bit for bit, while everything else
trains. At T = 3, or with a DNI at T = 2, the same columns do change, so the test can fail.
"""

from __future__ import annotations

import pytest
import torch

from synthgrad.recurrent import RecurrentConfig, RecurrentMethod, RecurrentTask
from synthgrad.recurrent.copy_loop import CopySetup
from synthgrad.recurrent.tasks import BITS, CopyTask

LENGTHS = (1, 2, 3, 4, 5, 6)  # odd and even N: at even N a chunk holds the delimiter and the first output


def test_no_two_step_chunk_holds_an_item_and_a_scored_step_at_any_phase():
    for n in range(1, 40):
        batch = CopyTask().sample(1, n, torch.Generator().manual_seed(n))
        items = batch.inputs[:, 0, :BITS].abs().sum(1) > 0  # (S,) steps whose bit channels can be non-zero
        items[:n] = True  # an all-zero item is still an item step
        scored = batch.mask[:, 0] > 0
        assert items.nonzero().max() == n - 1 and scored.nonzero().min() == n + 1
        for phase in (0, 1):
            for lo in range(-phase, batch.inputs.shape[0], 2):
                chunk = slice(max(lo, 0), lo + 2)
                assert not (items[chunk].any() and scored[chunk].any()), (n, phase, lo)


def train(method: RecurrentMethod, T: int, steps: int = 3) -> tuple[dict, dict]:  # noqa: N803
    """A tiny Copy model's weights before and after `steps` sequences at each length of LENGTHS."""
    cfg = RecurrentConfig(
        task=RecurrentTask.COPY, method=method, T=T, hidden_size=16, batch_size=8, max_samples=1, seed=5
    ).resolve()
    s = CopySetup(cfg, None)
    before = {k: v.detach().clone() for k, v in s.trainer.core.state_dict().items()}
    before |= {f"readout.{k}": v.detach().clone() for k, v in s.trainer.readout.state_dict().items()}
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        for n in LENGTHS:
            batch = s.task.sample(cfg.batch_size, n, gen)
            s.trainer.train_sequence(batch.inputs, batch.targets, batch.mask)
    after = dict(s.trainer.core.state_dict()) | {f"readout.{k}": v for k, v in s.trainer.readout.state_dict().items()}
    return before, after


def test_truncated_bptt_at_t2_leaves_the_bit_channels_input_weights_exactly_at_their_init():
    before, after = train(RecurrentMethod.BPTT, 2)
    w0, w1 = before["cell.weight_ih"], after["cell.weight_ih"]  # (4H, 9): gates i, f, g, o by channel
    assert w0.shape[1] == CopyTask.input_size == BITS + 1
    assert torch.equal(w1[:, :BITS], w0[:, :BITS])  # bit for bit: no gradient ever reached them
    assert not torch.equal(w1[:, BITS], w0[:, BITS])  # the delimiter's column trains (even N)
    for name in ("cell.weight_hh", "cell.bias_ih", "cell.bias_hh", "readout.weight", "readout.bias"):
        assert not torch.equal(after[name], before[name]), name


@pytest.mark.parametrize(("method", "T"), [(RecurrentMethod.BPTT, 3), (RecurrentMethod.DNI, 2)])
def test_a_longer_chunk_or_a_synthetic_gradient_does_train_the_bit_channels(method, T):  # noqa: N803
    before, after = train(method, T)
    changed = (after["cell.weight_ih"][:, :BITS] != before["cell.weight_ih"][:, :BITS]).any(0)
    assert changed.all(), changed  # every bit channel's column moved
