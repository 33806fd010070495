"""Penn Treebank at character and word level, and contiguous windows of a token stream (synthgrad/data/windows.py):
on small files the tests write, and on the real files when ../shared/data is there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import shared_data_dir
from synthgrad.data.ptb import (
    EOS,
    CharCorpus,
    WordCorpus,
    load_ptb,
    load_ptb_chars,
    load_ptb_words,
)
from synthgrad.data.windows import SplitWindows, Windows
from synthgrad.errors import ConfigError, DataError

WORDS = {
    "train": " the cat sat on the mat \n the dog sat \n a cat ran on a mat \n",
    "valid": " the dog ran \n",
    "test": " a cat sat on the dog \n",
}


def write_ptb(directory: Path, words: dict[str, str] = WORDS) -> Path:
    """Mikolov's formats: word files as given, character files derived from them (`_` between words)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in words.items():
        (directory / f"ptb.{split}.txt").write_text(text)
        lines = [" ".join("_".join(line.split())) for line in text.splitlines()]
        (directory / f"ptb.char.{split}.txt").write_text("".join(f" {line} \n" for line in lines))
    return directory


# ---------------------------------------------------------------------------------------------- word level
def test_word_level_adds_an_end_of_sentence_per_line(tmp_path: Path) -> None:
    corpus = load_ptb_words(write_ptb(tmp_path))
    assert isinstance(corpus, WordCorpus)
    assert corpus.vocab == tuple(sorted({"the", "cat", "sat", "on", "mat", "dog", "a", "ran", EOS}))
    assert corpus.decode(corpus.train) == "the cat sat on the mat <eos> the dog sat <eos> a cat ran on a mat <eos>"
    assert corpus.decode(corpus.valid) == "the dog ran <eos>"
    assert torch.equal(corpus.encode("the dog ran <eos>"), corpus.valid)
    assert corpus.train.dtype == torch.long and corpus.vocab_size == 9


def test_word_level_errors_name_the_file(tmp_path: Path) -> None:
    write_ptb(tmp_path, {**WORDS, "test": " a zebra sat \n"})
    with pytest.raises(DataError, match=r"ptb\.test\.txt: symbols not in train: \['zebra'\]"):
        load_ptb_words(tmp_path)
    (tmp_path / "ptb.valid.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"ptb\.valid\.txt holds no words"):
        load_ptb_words(tmp_path)
    (tmp_path / "ptb.valid.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="not a text file"):
        load_ptb_words(tmp_path)
    (tmp_path / "ptb.valid.txt").unlink()
    with pytest.raises(DataError, match=r"ptb\.valid\.txt not found"):
        load_ptb_words(tmp_path)


def test_character_level_is_unchanged_and_datasets_are_named(tmp_path: Path) -> None:
    write_ptb(tmp_path / "ptb")  # the ptb/ subfolder is found too
    chars = load_ptb("ptb-char", tmp_path)
    assert isinstance(chars, CharCorpus) and torch.equal(chars.train, load_ptb_chars(tmp_path).train)
    assert chars.decode(chars.valid) == "the_dog_ran\n"
    assert isinstance(load_ptb("ptb-word", tmp_path), WordCorpus)
    with pytest.raises(ConfigError, match="unknown dataset 'ptb-byte': expected one of ptb-char, ptb-word"):
        load_ptb("ptb-byte", tmp_path)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        chars.split("dev")


# ---------------------------------------------------------------------------------------------- windows
def test_windows_are_contiguous_and_shifted_by_one() -> None:
    ids = torch.arange(100, 123)  # N = 23 ids, 22 targets
    w = Windows(ids, 5)
    assert len(w) == 4 and w.tokens == 22
    x, y = w.batch([0, 3])
    assert torch.equal(x, torch.stack([ids[0:5], ids[15:20]])) and torch.equal(y, x + 1)
    targets = torch.cat([w.batch([i])[1][0] for i in range(len(w))])
    assert torch.equal(targets, ids[1:21])  # every target once: consecutive windows share their boundary id
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        w.batch([4])


def test_sequential_windows_cover_every_target_once() -> None:
    ids = torch.arange(23)
    w = Windows(ids, 5)
    batches = list(w.sequential(3))
    assert [tuple(x.shape) for x, _ in batches] == [(3, 5), (1, 5), (1, 2)]  # 3 + 1 full windows, then the tail
    assert torch.equal(torch.cat([y.flatten() for _, y in batches]), ids[1:])
    assert all(torch.equal(y, x + 1) for x, y in batches)
    assert [tuple(x.shape) for x, _ in w.sequential(3, tail=False)] == [(3, 5), (1, 5)]
    assert len(list(Windows(torch.arange(21), 5).sequential(4))) == 1  # no tail when T divides N − 1


def test_training_order_is_a_function_of_seed_and_epoch() -> None:
    w = Windows(torch.arange(1001), 10)  # 100 windows
    assert torch.equal(w.order(0, 7), w.order(0, 7))  # every process derives the same order
    assert sorted(w.order(0, 7).tolist()) == list(range(100))
    assert not torch.equal(w.order(0, 7), w.order(1, 7)) and not torch.equal(w.order(0, 7), w.order(0, 8))
    assert w.batches_per_epoch(32) == 3
    epoch = list(w.epoch(1, 32, seed=7))
    for k in range(3):  # by step number alone, across the epoch boundary
        assert all(torch.equal(a, b) for a, b in zip(w.train_batch(3 + k, 32, seed=7), epoch[k], strict=True))
    starts = torch.cat([x[:, 0] for x, _ in epoch])
    assert len(set(starts.tolist())) == 96  # distinct, non-overlapping windows within an epoch


def test_window_errors_name_the_numbers() -> None:
    with pytest.raises(ConfigError, match="context 30 is longer than the valid split, whose 12 tokens give 11"):
        Windows(torch.arange(12), 30, "valid")
    with pytest.raises(ConfigError, match="context must be an integer >= 1, got 0"):
        Windows(torch.arange(12), 0)
    with pytest.raises(ConfigError, match="1-D tensor of token ids"):
        Windows(torch.rand(12), 3)
    with pytest.raises(ConfigError, match="batch size 5 is more than the 3 windows of 3 tokens in the train split"):
        Windows(torch.arange(12), 3, "train").batches_per_epoch(5)
    with pytest.raises(ConfigError, match="batch size must be an integer >= 1, got 0"):
        list(Windows(torch.arange(12), 3).sequential(0))


def test_split_windows_of_a_small_corpus(tmp_path: Path) -> None:
    corpus = load_ptb_words(write_ptb(tmp_path))
    splits = SplitWindows.from_corpus(corpus, 3)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (5, 1, 2)
    x, y = splits.test.batch([0])
    assert corpus.decode(x[0]) == "a cat sat" and corpus.decode(y[0]) == "cat sat on"
    with pytest.raises(ConfigError, match="context 4 is longer than the valid split, whose 4 tokens give 3"):
        SplitWindows.from_corpus(corpus, 4)


# ---------------------------------------------------------------------------------------------- the real files
@pytest.fixture
def ptb_dir() -> Path:
    path = shared_data_dir()
    if path is None or not (path / "ptb" / "ptb.train.txt").is_file():
        pytest.skip("real Penn Treebank not found: set SYNTHGRAD_DATA_DIR or put ../shared/data beside the checkout")
    return path


def test_real_ptb_words(ptb_dir: Path) -> None:
    """Mikolov's word-level files: 10,000 words with <eos>; 929,589 / 73,760 / 82,430 tokens."""
    corpus = load_ptb("ptb-word", ptb_dir)
    assert corpus.vocab_size == 10_000 and EOS in corpus.vocab and "<unk>" in corpus.vocab
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    splits = SplitWindows.from_corpus(corpus, 35)
    x, y = splits.train.train_batch(0, 20, seed=0)
    assert x.shape == y.shape == (20, 35) and torch.equal(x[:, 1:], y[:, :-1])


def test_real_ptb_chars(ptb_dir: Path) -> None:
    """Mikolov's character files: 50 symbols; windows of 128 + 1 read the stream contiguously."""
    corpus = load_ptb("ptb-char", ptb_dir)
    assert corpus.vocab_size == 50
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (5_017_482, 393_042, 442_423)
    splits = SplitWindows.from_corpus(corpus, 128)
    assert len(splits.train) == (5_017_482 - 1) // 128
    x, y = splits.valid.batch([0])
    assert corpus.decode(x[0]).startswith(corpus.decode(corpus.valid[:20])) and torch.equal(x[0, 1:], y[0, :-1])
    assert sum(y.numel() for _, y in splits.test.sequential(256)) == len(corpus.test) - 1
