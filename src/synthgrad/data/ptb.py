"""Penn Treebank as Mikolov distributes it (../shared/data/ptb, SOURCES.md), read into symbol ids.

Character level (`ptb.char.{split}.txt`): characters separated by spaces, `_` for the space between words, and
one line per sentence; the end of a line is a symbol of its own. Word level (`ptb.{split}.txt`): words separated
by spaces, rare words already replaced by `<unk>`, one sentence per line; every line ends in an end-of-sentence
symbol `<eos>` (the usual reading: 929,589 training tokens and a 10,000-word vocabulary with `<eos>`). The
vocabulary is the sorted set of the training symbols (50 characters, 10,000 words), and the three files are the
fixed train / valid / test split. Files that are missing, not text, or not in this format raise `DataError`
naming the file; `load_ptb` takes a dataset name (`PTB_DATASETS`) and raises `ConfigError` for another.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from synthgrad.errors import ConfigError, DataError

PTB_SPLITS = ("train", "valid", "test")
EOS = "<eos>"  # the end-of-sentence word that closes every line at word level


@dataclass(frozen=True)
class Corpus:
    """Symbol ids (N,) int64 per split; `vocab[i]` is symbol i (built from train, sorted)."""

    train: Tensor
    valid: Tensor
    test: Tensor
    vocab: tuple[str, ...]

    separator: ClassVar[str] = ""  # what `decode` puts between two symbols

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def split(self, name: str) -> Tensor:
        """The ids of split `name` (one of `PTB_SPLITS`)."""
        if name not in PTB_SPLITS:
            raise ConfigError(f"unknown split {name!r}: expected one of {', '.join(PTB_SPLITS)}")
        return getattr(self, name)

    def decode(self, ids: Tensor) -> str:
        return self.separator.join(self.vocab[i] for i in ids.tolist())

    def encode(self, text: str) -> Tensor:
        """The ids of `text` split into symbols as `decode` joins them; DataError naming an unknown symbol."""
        symbols = list(text) if not self.separator else text.split(self.separator)
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted({c for c in symbols if c not in index})
        if unknown:
            raise DataError(f"symbols not in the vocabulary: {unknown[:10]}")
        return torch.tensor([index[c] for c in symbols], dtype=torch.long)


@dataclass(frozen=True)
class CharCorpus(Corpus):
    """Character level: `decode` joins symbols as they are (`_` is the word space, newline the line end)."""


@dataclass(frozen=True)
class WordCorpus(Corpus):
    """Word level: `decode` joins words with spaces; `<eos>` ends a sentence."""

    separator: ClassVar[str] = " "


def _ptb_file(data_dir: str | Path, name: str) -> Path:
    """`name` in `data_dir` or `data_dir/ptb`; DataError naming the file if neither has it."""
    data_dir = Path(data_dir).expanduser()
    for d in (data_dir, data_dir / "ptb"):
        if (d / name).is_file():
            return d / name
    raise DataError(f"Penn Treebank file {name} not found in {data_dir} (nor in its ptb/ subfolder)")


def ptb_char_path(data_dir: str | Path, split: str) -> Path:
    """`ptb.char.{split}.txt` in `data_dir` or `data_dir/ptb`."""
    return _ptb_file(data_dir, f"ptb.char.{split}.txt")


def read_text(path: Path) -> str:
    """The file as UTF-8 text; DataError naming it if it is unreadable or not text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not a text file (byte {e.start} is not UTF-8): is it a Penn Treebank file?"
        ) from None
    except OSError as e:
        raise DataError(f"{path} is unreadable ({e.strerror})") from None


def read_char_symbols(path: Path) -> str:
    """The symbols of a Mikolov character file: characters separated by spaces, `_` the word space, each line
    ending in a newline symbol. Returns them as one string (one character per symbol)."""
    text = read_text(path)
    bad = re.search(r"[^ \n]{2,}", text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise DataError(f"{path}:{line}: token {bad.group()!r} is not a single character separated by spaces")
    if not text.strip():
        raise DataError(f"{path} holds no characters")
    return text.replace(" ", "")


def load_ptb_chars(data_dir: str | Path) -> CharCorpus:
    """Read the three splits; the vocabulary is the sorted set of train symbols (50 for PTB)."""
    symbols = {s: read_char_symbols(ptb_char_path(data_dir, s)) for s in PTB_SPLITS}
    return CharCorpus(*_index(symbols, lambda split: ptb_char_path(data_dir, split)))


def ptb_word_path(data_dir: str | Path, split: str) -> Path:
    """`ptb.{split}.txt` in `data_dir` or `data_dir/ptb`."""
    return _ptb_file(data_dir, f"ptb.{split}.txt")


def read_words(path: Path) -> list[str]:
    """The words of a Mikolov word-level file, each line's words followed by `<eos>`."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path} holds no words")
    if EOS in text:
        line = text.count("\n", 0, text.index(EOS)) + 1
        raise DataError(f"{path}:{line}: holds {EOS}, the symbol this reader adds at every line end")
    return [w for line in text.splitlines() for w in (*line.split(), EOS)]


def load_ptb_words(data_dir: str | Path) -> WordCorpus:
    """Read the three word-level splits; the vocabulary is the sorted set of train words with `<eos>` (10,000)."""
    words = {s: read_words(ptb_word_path(data_dir, s)) for s in PTB_SPLITS}
    return WordCorpus(*_index(words, lambda split: ptb_word_path(data_dir, split)))


def _index(symbols: dict[str, str | list[str]], path: Callable[[str], Path]) -> tuple:
    """(train ids, valid ids, test ids, vocab): ids in the sorted vocabulary of train; DataError naming the file
    of a symbol that train lacks."""
    vocab = tuple(sorted(set(symbols["train"])))
    index = {c: i for i, c in enumerate(vocab)}
    ids = {}
    for split, seq in symbols.items():
        unknown = set(seq) - index.keys()
        if unknown:
            raise DataError(f"{path(split)}: symbols not in train: {sorted(unknown)[:10]}")
        ids[split] = torch.tensor([index[c] for c in seq], dtype=torch.long)
    return ids["train"], ids["valid"], ids["test"], vocab


PTB_DATASETS: dict[str, Callable[[str | Path], Corpus]] = {"ptb-char": load_ptb_chars, "ptb-word": load_ptb_words}


def load_ptb(name: str, data_dir: str | Path) -> Corpus:
    """The corpus `name` (one of `PTB_DATASETS`: "ptb-char", "ptb-word") from `data_dir` (or its ptb/)."""
    if name not in PTB_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: expected one of {', '.join(PTB_DATASETS)}")
    return PTB_DATASETS[name](data_dir)
