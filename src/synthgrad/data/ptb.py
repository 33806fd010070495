"""Penn Treebank as Mikolov distributes it (../shared/data/ptb, SOURCES.md): character level, read into symbol ids.

The character files hold characters separated by spaces, `_` for the space between words, and one line per
sentence; the end of a line is a symbol of its own. The vocabulary is the sorted set of the training symbols
(50 for PTB). Files that are missing, not text, or not in this format raise `DataError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from synthgrad.errors import DataError

PTB_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class CharCorpus:
    """Symbol ids (N,) int64 per split; `vocab[i]` is symbol i (built from train, sorted)."""

    train: Tensor
    valid: Tensor
    test: Tensor
    vocab: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())


def ptb_char_path(data_dir: str | Path, split: str) -> Path:
    """`ptb.char.{split}.txt` in `data_dir` or `data_dir/ptb`; DataError naming the file if neither has it."""
    name = f"ptb.char.{split}.txt"
    data_dir = Path(data_dir).expanduser()
    for d in (data_dir, data_dir / "ptb"):
        if (d / name).is_file():
            return d / name
    raise DataError(f"Penn Treebank file {name} not found in {data_dir} (nor in its ptb/ subfolder)")


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
    vocab = tuple(sorted(set(symbols["train"])))
    index = {c: i for i, c in enumerate(vocab)}
    ids = {}
    for split, text in symbols.items():
        unknown = set(text) - index.keys()
        if unknown:
            raise DataError(f"{ptb_char_path(data_dir, split)}: symbols not in train: {sorted(unknown)}")
        ids[split] = torch.tensor([index[c] for c in text], dtype=torch.long)
    return CharCorpus(ids["train"], ids["valid"], ids["test"], vocab)
