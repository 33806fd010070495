"""The continuous-stream probe of issue #20 (`--episodes E`, [Note: continuous stream] in recurrent/copy_loop.py):
E = 1 is today's run bit for bit; a training sequence is E episodes back to back, the state carried across their
boundaries; the curriculum's error stays per episode; bad values are one line and exit 2; config.json, resume and
older run folders. Tiny sizes, one thread: a few seconds in all."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from helpers import run_cli, same_tensors, summary_and_rows
from synthgrad.recurrent import RecurrentConfig, RecurrentMethod, RecurrentTask, copy_loop
from synthgrad.recurrent.copy_loop import CopySetup, per_episode
from synthgrad.recurrent.runner import IMPLIED, RESUMABLE, train_recurrent
from synthgrad.recurrent.task_config import RepeatCurriculum
from synthgrad.recurrent.tasks import Curriculum, SequenceBatch, TwoAxisCurriculum, sequence_cost_bits
from synthgrad.training.run_folder import RunFolder, resume_mismatch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden-size", "8", "--batch-size", "4", "--threads", "1", "--no-progress", "--seed", "3"]


def setup(task: RecurrentTask = RecurrentTask.COPY, **changes: object) -> CopySetup:
    values = {"hidden_size": 8, "batch_size": 4, "T": 3, "max_samples": 1, "method": RecurrentMethod.BPTT}
    cfg = RecurrentConfig(task=task, **{**values, **changes})
    return CopySetup(cfg.validate().resolve(), None)


def fields_of(b: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b.inputs, b.targets, b.mask


# -- E = 1 is today's run ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "method"), [("copy", "dni"), ("repeat-copy", "bptt")])
def test_one_episode_is_todays_run_bit_for_bit(capfd, tmp_path, task, method) -> None:
    args = ["train", "--task", task, "--method", method, "--T", "2", *TINY, "--max-samples", "48", "--log-every", "16"]
    code, _, err = run_cli(capfd, *args, "--out", tmp_path / "plain")
    assert code == 0, err
    code, _, err = run_cli(capfd, *args, "--episodes", "1", "--out", tmp_path / "explicit")
    assert code == 0, err
    plain, explicit = summary_and_rows(tmp_path / "plain"), summary_and_rows(tmp_path / "explicit")
    assert plain == explicit
    summary, rows = plain
    assert summary["episodes"] == 1 and summary["curriculum_error"] == "bits wrong per sequence"
    assert summary["samples"] == 48 and summary["steps"] == 12  # a sample is still one sequence of one episode
    assert [r["samples"] for r in rows] == [16, 32, 48]
    states = [RunFolder(tmp_path / d, {}).load_state() for d in ("plain", "explicit")]
    assert same_tensors(states[0]["training"], states[1]["training"])
    assert same_tensors(states[0]["task"], states[1]["task"])  # the generator drew the same numbers
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["episodes"] == 1


def test_one_episode_streams_exactly_todays_batch() -> None:
    s = setup()
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert all(map(torch.equal, fields_of(s.stream(4, a)), fields_of(s.sample(4, b))))
    assert torch.equal(a.get_state(), b.get_state())


# -- a sequence is E episodes back to back ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "changes"),
    [
        (RecurrentTask.COPY, {}),
        (RecurrentTask.REPEAT_COPY, {}),
        (RecurrentTask.REPEAT_COPY, {"repeat_curriculum": RepeatCurriculum.LENGTH, "max_repeats": 4}),
    ],
    ids=["copy", "repeat-copy-both", "repeat-copy-length"],
)
def test_a_sequence_is_its_episodes_back_to_back(task, changes) -> None:
    s = setup(task, episodes=3, **changes)
    s.curriculum.length = 2
    if isinstance(s.curriculum, TwoAxisCurriculum):
        s.curriculum.repeats = 2  # the level (L, N) = (2, 2), held by every episode
    stream = s.stream(4, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    episodes = [s.sample(4, gen) for _ in range(3)]  # one after the other from the same generator
    for got, parts in zip(fields_of(stream), zip(*map(fields_of, episodes), strict=True), strict=True):
        assert torch.equal(got, torch.cat(parts))
    lengths = [e.inputs.shape[0] for e in episodes]
    assert stream.inputs.shape == (sum(lengths), 4, s.task.input_size)
    assert not torch.equal(episodes[0].targets[-4:], episodes[1].targets[-4:])  # fresh bits in each episode
    if isinstance(s.curriculum, TwoAxisCurriculum):
        assert lengths == [2 + 1 + 2 * 2 + 1] * 3
    elif task is RecurrentTask.COPY:
        assert lengths == [2 * 2 + 1] * 3
    else:  # each episode draws its own N, one for the whole batch: L + 1 + N·L + 1 steps
        assert all((n - 4) % 2 == 0 and 1 <= (n - 4) // 2 <= 4 for n in lengths)


def test_the_state_is_carried_across_the_episode_boundary() -> None:
    """Copy at L = 1 (3 steps an episode), E = 2, T = 3, truncated BPTT: the second chunk is the second episode.
    Its predictions are those of the weights after the first chunk's update run on from the state the first
    episode ended in, not from the zero state."""
    stream_setup, ref = setup(episodes=2), setup()
    assert same_tensors(stream_setup.trainer.state_dict(), ref.trainer.state_dict())  # E does not change the draw
    batch = stream_setup.stream(4, torch.Generator().manual_seed(9))
    assert batch.inputs.shape[0] == 6
    chunks = stream_setup.trainer.train_sequence(batch.inputs, batch.targets, batch.mask)
    assert [c.steps for c in chunks] == [3, 3]
    first = SequenceBatch(batch.inputs[:3], batch.targets[:3], batch.mask[:3])
    _, carried = ref.trainer.predict(first.inputs)  # the state at the end of episode 1, before the update
    ref_chunks = ref.trainer.train_sequence(first.inputs, first.targets, first.mask)  # the same update
    assert torch.equal(ref_chunks[0].outputs, chunks[0].outputs)
    on, _ = ref.trainer.predict(batch.inputs[3:], carried)
    fresh, _ = ref.trainer.predict(batch.inputs[3:])
    assert torch.allclose(chunks[1].outputs, on, atol=1e-6)
    assert not torch.allclose(chunks[1].outputs, fresh, atol=1e-3)
    # and training the two episodes apart (the second from the zero state) gives another loss
    apart = ref.trainer.train_sequence(batch.inputs[3:], batch.targets[3:], batch.mask[3:])
    assert abs(apart[0].loss - chunks[1].loss) > 1e-4


def test_chunks_cross_the_episode_boundaries_at_every_phase() -> None:
    """Copy at L = 1 with T = 2: episodes of 3 steps, so the chunk boundaries fall at steps 2, 4, 6, … of a
    6-episode stream: at each phase (0, 1, 2) of an episode in turn."""
    s = setup(episodes=6, T=2)
    batch = s.stream(4, torch.Generator().manual_seed(1))
    chunks = s.trainer.train_sequence(batch.inputs, batch.targets, batch.mask)
    starts = [2 * k for k in range(len(chunks))]
    assert [c.steps for c in chunks] == [2] * 9 and {t % 3 for t in starts} == {0, 1, 2}


# -- the curriculum's error is per episode ---------------------------------------------------------------------------


def test_the_curriculum_error_is_bits_wrong_per_episode_by_hand() -> None:
    """Two sequences of two 3-step episodes, 3 output bits scored at each episode's last step. Sequence 0: 3 bits
    wrong in episode 1, 1 in episode 2; sequence 1: none scored wrong (2 wrong at an unscored step). Per sequence
    (4 + 0) / 2 = 2 bits, per episode 1."""
    targets, mask = torch.zeros(6, 2, 3), torch.zeros(6, 2)
    mask[2], mask[5] = 1.0, 1.0
    logits = torch.full((6, 2, 3), -2.0)  # predicts 0: right everywhere
    logits[2, 0] = 2.0  # 3 wrong
    logits[5, 0, 1] = 2.0  # 1 wrong
    logits[1, 1, :2] = 2.0  # unscored
    batch = SequenceBatch(torch.zeros(6, 2, 4), targets, mask)
    bits, cost = per_episode(logits, batch, 2)
    assert bits == 1.0
    assert cost == pytest.approx(float(sequence_cost_bits(logits, batch).mean()) / 2)
    assert per_episode(logits, batch, 1)[0] == 2.0  # E = 1: per sequence, as before
    # the threshold means the same at every E: 8 episodes with one bit wrong among them are 0.125 per episode,
    # which solves the level (below 0.15) although the sequence has a bit wrong
    curriculum = Curriculum(threshold=0.15, window=1)
    assert curriculum.record(1.0 / 8) and curriculum.max_solved == 1


def test_the_loop_records_the_per_episode_error(monkeypatch, tmp_path) -> None:
    seen: dict[str, list] = {"per_sequence": [], "recorded": []}
    real_errors, real_record = copy_loop.sequence_bit_errors, Curriculum.record

    def errors(logits, batch):
        e = real_errors(logits, batch)
        seen["per_sequence"].append(e.mean().item())
        return e

    def record(self, error):
        seen["recorded"].append(error)
        return real_record(self, error)

    monkeypatch.setattr(copy_loop, "sequence_bit_errors", errors)
    monkeypatch.setattr(Curriculum, "record", record)
    cfg = RecurrentConfig(task=RecurrentTask.COPY, method=RecurrentMethod.BPTT, hidden_size=8, batch_size=4, T=2,
                          episodes=2, max_samples=24, log_every=8, threads=1, out=str(tmp_path / "run"))  # fmt: skip
    summary = train_recurrent(cfg, progress=False)
    assert summary["samples"] == 24 and summary["steps"] == 3  # 4 sequences × 2 episodes an update
    assert summary["curriculum_error"].startswith("bits wrong per episode")
    assert len(seen["recorded"]) == 3 and any(v > 0 for v in seen["per_sequence"])
    assert seen["recorded"] == [v / 2 for v in seen["per_sequence"][:3]]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["bit_errors"] for r in rows] == pytest.approx(seen["recorded"])


# -- bad values, config.json, resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--episodes", "0"], ["--episodes", "0"]),
        (["--episodes", "-1"], ["--episodes", "-1"]),
        (["--episodes", "2.5"], ["--episodes", "2.5"]),
        (["--episodes", "many"], ["--episodes", "many"]),
        (["--task", "ptb-char", "--episodes", "2"], ["--episodes", "copy and repeat-copy", "not of ptb-char"]),
    ],
    ids=["zero", "negative", "float", "word", "ptb"],
)
def test_bad_values_are_one_line_and_exit_2(capfd, tmp_path, args, needles) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(capfd, "train", "--task", "copy", "--max-samples", "8", *args, "--out", out)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("synthgrad: error: "), err
    assert all(n in err for n in needles), err
    assert not out.exists()


@pytest.mark.parametrize("line", ["episodes = 0", "episodes = -1", "episodes = 1.5", "episodes = true"])
def test_bad_values_in_an_experiment_file_are_one_line(capfd, tmp_path, line) -> None:
    (tmp_path / "bad.toml").write_text(f'task = "copy"\nmax_samples = 8\n{line}\n')
    code, _, err = run_cli(capfd, "train", "--config", tmp_path / "bad.toml", "--out", tmp_path / "run")
    assert code == 2 and len(err.splitlines()) == 1 and "--episodes" in err, err
    assert not (tmp_path / "run").exists()


def test_episodes_are_recorded_and_a_run_resumes_exactly(capfd, tmp_path) -> None:
    base = ["train", "--task", "copy", "--method", "dni", "--T", "2", *TINY, "--log-every", "8"]
    args = [*base, "--episodes", "2"]
    code, _, err = run_cli(capfd, *args, "--max-samples", "32", "--out", tmp_path / "whole")
    assert code == 0, err
    code, _, err = run_cli(capfd, *args, "--max-samples", "16", "--out", tmp_path / "split")
    assert code == 0, err
    code, _, err = run_cli(capfd, *args, "--max-samples", "32", "--out", tmp_path / "split", "--resume")
    assert code == 0, err
    whole, split = summary_and_rows(tmp_path / "whole"), summary_and_rows(tmp_path / "split")
    assert whole == split
    summary, rows = whole
    assert summary["episodes"] == 2 and (summary["samples"], summary["steps"]) == (32, 4)
    assert [r["samples"] for r in rows] == [8, 16, 24, 32]
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["episodes"] == 2
    states = [RunFolder(tmp_path / d, {}).load_state()["training"] for d in ("whole", "split")]
    assert same_tensors(*states)
    # the same folder with another E (here the default) is another run
    code, _, err = run_cli(capfd, *base, "--max-samples", "48", "--out", tmp_path / "split", "--resume")
    assert code == 2 and len(err.splitlines()) == 1 and "episodes" in err, err


def test_a_run_from_before_the_flag_implies_one_episode() -> None:
    assert IMPLIED["episodes"] == 1 and "episodes" not in RESUMABLE
    now = RecurrentConfig(max_samples=10).validate().resolve().to_dict()
    before = {k: v for k, v in now.items() if k != "episodes"}
    assert now["episodes"] == 1
    assert resume_mismatch(before, now, RESUMABLE, IMPLIED) is None
    assert "episodes" in resume_mismatch(before, {**now, "episodes": 8}, RESUMABLE, IMPLIED)


# -- the probe --------------------------------------------------------------------------------------------------------


def test_stream_8_is_a_probe_outside_the_default_set() -> None:
    spec = importlib.util.spec_from_file_location("recurrent_probes", REPO / "benchmarks" / "recurrent_probes.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    assert runner.PROBES["stream-8"][1] == ["--episodes", "8"]
    assert "stream-8" not in runner.DEFAULT_PROBES
