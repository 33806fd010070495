"""Task generators' invariants (property based), the curriculum, Penn Treebank reading, the two-network data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import shared_data_dir
from synthgrad.errors import ConfigError, DataError
from synthgrad.recurrent import (
    CopyTask,
    Curriculum,
    LSTMCore,
    MultiNetTask,
    RepeatCopyTask,
    TwoAxisCurriculum,
    batchify,
    bit_errors_by_step,
    bits_per_character,
    evaluate_bpc,
    load_ptb_chars,
    sequence_bit_errors,
    sequence_cost_bits,
    stream_chunks,
)

FAST = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@FAST
@given(length=st.integers(1, 12), batch=st.integers(1, 4), seed=seeds)
def test_copy_batch_invariants(length, batch, seed) -> None:
    b = CopyTask().sample(batch, length, gen(seed))
    steps = 2 * length + 1
    assert (
        b.inputs.shape == (steps, batch, 9) and b.targets.shape == (steps, batch, 8) and b.mask.shape == (steps, batch)
    )
    for t in (b.inputs, b.targets, b.mask):
        assert set(t.unique().tolist()) <= {0.0, 1.0}
    out = slice(length + 1, None)
    assert torch.all(b.mask[out] == 1) and torch.all(b.mask[: length + 1] == 0)  # scored only in the output phase
    assert torch.all(b.targets[: length + 1] == 0) and torch.all(b.inputs[out] == 0)
    assert torch.equal(b.targets[out], b.inputs[:length, :, :8])  # the output is the sequence
    delimiter = b.inputs[:, :, 8]
    assert torch.all(delimiter[length] == 1) and delimiter.sum() == batch


@FAST
@given(
    length=st.integers(1, 6), repeats=st.integers(1, 5), extra=st.integers(0, 5), batch=st.integers(1, 3), seed=seeds
)
def test_repeat_copy_batch_invariants(length, repeats, extra, batch, seed) -> None:
    task = RepeatCopyTask(max_repeats=repeats + extra)
    b = task.sample(batch, length, repeats, gen(seed))
    start, steps = length + 1, length + 1 + repeats * length + 1
    assert b.inputs.shape == (steps, batch, 10) and b.targets.shape == (steps, batch, 9)
    assert set(b.targets.unique().tolist()) <= {0.0, 1.0} and set(b.inputs[:, :, :9].unique().tolist()) <= {0.0, 1.0}
    assert torch.all(b.mask[start:] == 1) and torch.all(b.mask[:start] == 0)
    assert torch.all(b.targets[:start] == 0) and torch.all(b.inputs[start:] == 0)
    seq = b.inputs[:length, :, :8]
    for r in range(repeats):  # every repeat equals the sequence
        assert torch.equal(b.targets[start + r * length : start + (r + 1) * length, :, :8], seq)
    marker = b.targets[:, :, 8]
    assert torch.all(marker[-1] == 1) and marker.sum() == batch and torch.all(b.targets[-1, :, :8] == 0)
    count = b.inputs[:, :, 9]
    assert torch.all(count[length] == task.normalised_repeats(repeats)) and torch.count_nonzero(count[:length]) == 0
    assert 1 <= task.sample_repeats(gen(seed)) <= task.max_repeats


@pytest.mark.parametrize("m", [2, 5, 10])
def test_repeat_count_is_normalised_to_mean_zero_variance_one(m) -> None:
    values = torch.tensor([RepeatCopyTask(m).normalised_repeats(n) for n in range(1, m + 1)], dtype=torch.float64)
    assert values.mean().item() == pytest.approx(0, abs=1e-12)
    assert values.var(unbiased=False).item() == pytest.approx(1, abs=1e-12)


def test_sequence_errors_count_only_scored_bits() -> None:
    b = RepeatCopyTask(4).sample(3, 5, 2, gen(0))
    perfect = b.targets * 60 - 30  # confident, correct logits
    assert torch.all(sequence_bit_errors(perfect, b) == 0) and torch.all(sequence_cost_bits(perfect, b) < 1e-3)
    wrong = perfect.clone()
    wrong[-1, 1, 8] *= -1  # the end marker of sequence 1
    wrong[0, 2, 0] *= -1  # an unscored input-phase step
    assert sequence_bit_errors(wrong, b).tolist() == [0, 1, 0]
    scored_bits = b.mask[:, 0].sum().item() * 9  # a logit of 0 costs exactly one bit per scored bit
    assert sequence_cost_bits(torch.zeros_like(perfect), b).tolist() == pytest.approx([scored_bits] * 3)


def test_bit_errors_by_step_are_per_scored_step_in_time_order() -> None:
    b = CopyTask().sample(4, 3, gen(0))
    perfect = b.targets * 60 - 30
    assert bit_errors_by_step(perfect, b).tolist() == [0, 0, 0]  # the 3 output steps only
    wrong = perfect.clone()
    wrong[-1, :2, :3] *= -1  # the last output step: 3 bits in 2 of the 4 sequences
    wrong[0, :, :] = -wrong[0, :, :]  # an unscored input-phase step
    assert bit_errors_by_step(wrong, b).tolist() == [0, 0, 1.5]


def reference_curriculum(errors, threshold, window):
    """Independent model: the length after each error, and the max length solved."""
    length, solved, buf, out = 1, 0, [], []
    for e in errors:
        buf.append(e)
        if len(buf) >= window and sum(buf[-window:]) / window < threshold:
            solved, length, buf = length, length + 1, []
        out.append(length)
    return out, solved


@FAST
@given(
    errors=st.lists(st.floats(0, 0.5, allow_nan=False), max_size=60),
    window=st.integers(1, 5),
    cut=st.integers(0, 60),
)
def test_curriculum_grows_exactly_when_the_window_mean_is_below_threshold(errors, window, cut) -> None:
    cur = Curriculum(threshold=0.15, window=window)
    expected, solved = reference_curriculum(errors, 0.15, window)
    lengths = []
    for i, e in enumerate(errors):
        if i == cut:  # checkpoint and resume through a plain dict
            cur = Curriculum.from_state_dict(dict(cur.state_dict()))
        before = cur.length
        grew = cur.record(e)
        assert cur.length == before + grew  # never decreases, +1 exactly when record() says so
        lengths.append(cur.length)
    assert lengths == expected and cur.score == solved == cur.length - 1


def test_curriculum_rejects_bad_settings() -> None:
    for kw in ({"window": 0}, {"threshold": 0.0}, {"length": 0}):
        with pytest.raises(ConfigError):
            Curriculum(**kw)


def test_two_axis_curriculum_grows_length_and_repeats_in_turn_and_scores_their_product() -> None:
    cur = TwoAxisCurriculum(threshold=0.15, window=1, max_repeats=3)
    levels = [(cur.length, cur.repeats)]
    for _ in range(7):
        assert cur.record(0.0)  # every batch solved
        levels.append((cur.length, cur.repeats))
    # L first, then N, in turn; N stays at max_repeats once there
    assert levels == [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3), (5, 3), (6, 3)]
    assert cur.score == 5 * 3  # the last level solved, (5, 3): 15 output vectors
    assert not cur.record(0.2) and (cur.length, cur.repeats) == (6, 3)


@FAST
@given(
    errors=st.lists(st.floats(0, 0.5, allow_nan=False), max_size=60), window=st.integers(1, 4), cut=st.integers(0, 60)
)
def test_two_axis_curriculum_solves_at_the_one_axis_moments_and_resumes(errors, window, cut) -> None:
    """Same growth rule as `Curriculum` (one step per solve), so it grows at the same batches; the score is
    the largest N·L solved, and a plain-dict round trip mid-way changes nothing."""
    one = Curriculum(threshold=0.15, window=window)
    two = TwoAxisCurriculum(threshold=0.15, window=window, max_repeats=100)  # N never capped here
    for i, e in enumerate(errors):
        if i == cut:
            two = TwoAxisCurriculum.from_state_dict(dict(two.state_dict()))
        size = two.length * two.repeats
        assert one.record(e) == two.record(e)
        if two.length * two.repeats != size:
            assert two.score == size  # a solve scores the level just left
    solves = one.length - 1
    assert two.length + two.repeats - 2 == solves and two.repeats in (two.length, two.length - 1)
    previous = (two.length, two.repeats - 1) if two.repeats == two.length else (two.length - 1, two.repeats)
    assert two.score == (previous[0] * previous[1] if solves else 0)


def test_two_axis_curriculum_rejects_bad_settings() -> None:
    for kw in ({"repeats": 0}, {"max_repeats": 0}, {"window": 0}):
        with pytest.raises(ConfigError):
            TwoAxisCurriculum(**kw)


# ---------------------------------------------------------------------------------------------- Penn Treebank
def write_ptb(directory: Path, splits: dict[str, str]) -> None:
    for split, text in splits.items():
        (directory / f"ptb.char.{split}.txt").write_text(text)


def test_ptb_reads_symbols_and_newlines(tmp_path) -> None:
    write_ptb(tmp_path, {"train": "a _ b \n c a \n", "valid": "b _ a \n", "test": "c \n"})
    corpus = load_ptb_chars(tmp_path)
    assert corpus.vocab == ("\n", "_", "a", "b", "c")
    assert corpus.decode(corpus.train) == "a_b\nca\n" and corpus.decode(corpus.test) == "c\n"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"train": "a \n", "valid": "a \n"}, "ptb.char.test.txt"),
        ({"train": "a \n", "valid": "ab \n", "test": "a \n"}, r"ptb.char.valid.txt:1: token 'ab'"),
        ({"train": "a \n", "valid": "a \n", "test": "a z \n"}, r"ptb.char.test.txt: symbols not in train: \['z'\]"),
    ],
)
def test_ptb_bad_input_is_a_data_error_naming_the_file(tmp_path, files, message) -> None:
    write_ptb(tmp_path, files)
    with pytest.raises(DataError, match=message):
        load_ptb_chars(tmp_path)


def test_ptb_real_data() -> None:
    root = shared_data_dir()
    if root is None or not (root / "ptb" / "ptb.char.valid.txt").is_file():
        pytest.skip("Penn Treebank not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    corpus = load_ptb_chars(root)
    assert corpus.vocab_size == 50 and "\n" in corpus.vocab and "_" in corpus.vocab
    text = (root / "ptb" / "ptb.char.valid.txt").read_text()
    assert corpus.valid.shape[0] == len(text.split()) + text.count("\n")
    assert corpus.decode(corpus.valid[:18]) == "consumers_may_want"
    data = batchify(corpus.valid, 8)
    x, y = next(stream_chunks(data, 20, corpus.vocab_size))
    assert x.shape == (20, 8, 50) and y.shape == (20, 8)
    # an untrained model with a zero readout predicts the uniform distribution: log2(50) bits per character
    readout = nn.Linear(16, 50)
    nn.init.zeros_(readout.weight), nn.init.zeros_(readout.bias)
    assert evaluate_bpc(LSTMCore(50, 16), readout, data[:, :200], 50, chunk=64) == pytest.approx(math.log2(50))


@FAST
@given(n=st.integers(4, 200), batch=st.integers(1, 4), T=st.integers(1, 9))
def test_stream_chunks_cover_the_stream_with_next_symbol_targets(n, batch, T) -> None:  # noqa: N803
    stream = torch.arange(n) % 7
    if n // batch < 2:
        with pytest.raises(ConfigError):
            batchify(stream, batch)
        return
    data = batchify(stream, batch)
    assert data.shape == (batch, n // batch) and torch.equal(data.flatten(), stream[: data.numel()])
    pieces = list(stream_chunks(data, T, 7))
    assert all(1 <= x.shape[0] <= T for x, _ in pieces)
    xs = torch.cat([x.argmax(-1) for x, _ in pieces]).t()
    ys = torch.cat([y for _, y in pieces]).t()
    assert torch.equal(xs, data[:, :-1]) and torch.equal(ys, data[:, 1:])


def test_bits_per_character_is_cross_entropy_over_ln2() -> None:
    assert bits_per_character(torch.zeros(3, 2, 8), torch.zeros(3, 2, dtype=torch.long)) == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        next(stream_chunks(torch.zeros(2, 5, dtype=torch.long), 0, 3))


# ---------------------------------------------------------------------------------------------- two networks
@FAST
@given(T=st.integers(1, 5), batch=st.integers(1, 3), seed=seeds)
def test_multinet_counts_3s_per_window_for_a_and_since_the_start_for_b(T, batch, seed) -> None:  # noqa: N803
    labels = torch.arange(20) % 10
    images = labels.float().view(20, 1, 1, 1).expand(20, 1, 2, 2) / 10  # each image encodes its label
    task = MultiNetTask(images, labels, T=T)
    b = task.sample(batch, gen(seed))
    assert b.inputs.shape == (T * T, batch, 4) and b.a_counts.shape == b.b_counts.shape == (T, batch)
    assert torch.equal((b.inputs[..., 0] * 10).round().long(), b.digits)  # the image shown is the digit's
    for k in range(T):
        window = b.digits[k * T : (k + 1) * T]
        assert torch.equal(b.a_counts[k], (window == 3).sum(0))
        assert torch.equal(b.b_counts[k], (b.digits[: (k + 1) * T] == 3).sum(0))
    assert torch.equal(b.b_counts[-1], (b.digits == 3).sum(0))  # B's last tick: the 3s of the last T² steps
    assert (task.a_classes, task.b_classes) == (T + 1, T * T + 1)
    assert int(b.a_counts.max()) <= T and int(b.b_counts.max()) <= T * T


def test_task_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="length"):
        CopyTask().sample(2, 0, gen(0))
    with pytest.raises(ConfigError, match="repeats"):
        RepeatCopyTask(3).sample(2, 2, 0, gen(0))
    with pytest.raises(ConfigError, match="T"):
        MultiNetTask(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), T=0)
