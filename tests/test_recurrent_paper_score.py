"""[Note: paper score]: the paper's Copy / Repeat Copy table counts the episode length, items + 3; the arithmetic
that shows it, pinned against the suite's copy of the paper's table, and `paper_score` in summaries and reports."""

from __future__ import annotations

import json

import pytest

from synthgrad.errors import ConfigError
from synthgrad.experiments.recurrent_suite import (
    HAND_WRITTEN,
    PAPER_ITEMS,
    PAPER_LENGTH,
    report,
    rerender,
    row_paper_score,
)
from synthgrad.recurrent.tasks import PAPER_SCORE_OFFSET, TwoAxisCurriculum, paper_score

REPEAT_PAPER = PAPER_LENGTH[("repeat-copy", "bptt")] + PAPER_LENGTH[("repeat-copy", "dni")]
COPY_PAPER = PAPER_LENGTH[("copy", "bptt")] + PAPER_LENGTH[("copy", "dni")]


def curriculum_products(levels: int) -> list[int]:
    """N·R of the first `levels` levels of our two-axis curriculum, grown by solving every batch."""
    c, sizes = TwoAxisCurriculum(threshold=1.0, window=1), []
    for _ in range(levels):
        sizes.append(c.size)
        assert c.record(0.0)
    return sizes


def test_the_paper_entries_are_the_two_axis_curriculum_products_plus_three_and_no_smaller_offset_fits():
    assert REPEAT_PAPER == (7, 5, 19, 23, 39, 33, 39, 59) and COPY_PAPER == (7, 8, 10, 8, 16, 14, 18, 18)
    products = curriculum_products(14)
    assert products == [1, 2, 4, 6, 9, 12, 16, 20, 25, 30, 36, 42, 49, 56]
    plus3 = {p + 3 for p in products}
    assert plus3 == {4, 5, 7, 9, 12, 15, 19, 23, 28, 33, 39, 45, 52, 59}
    assert all(e in plus3 for e in REPEAT_PAPER) and 59 == 8 * 7 + 3
    for offset in (0, 1, 2):
        shifted = {p + offset for p in products}
        assert sum(e in shifted for e in REPEAT_PAPER) <= 2, offset
    assert sum(e in {p + 1 for p in products} for e in REPEAT_PAPER) == 2  # 7 and 5: the bound is tight
    assert {e % 2 for e in COPY_PAPER} == {0, 1}  # both parities: N + 3 fits, 2N + c cannot
    assert PAPER_SCORE_OFFSET == 3


def test_paper_score_is_items_plus_three_and_zero_when_nothing_is_solved():
    assert [paper_score("copy", n) for n in (1, 2, 4, 13)] == [4, 5, 7, 16]
    assert paper_score("repeat-copy", 56) == 59  # N·R already counted (the two-axis curriculum's score)
    assert paper_score("repeat-copy", 8, repeats=7) == 59  # N and R given apart
    assert paper_score("copy", 0) == paper_score("repeat-copy", 0) == 0
    for key, row in PAPER_ITEMS.items():
        assert tuple(paper_score(key[0], n) for n in row) == PAPER_LENGTH[key]
    assert PAPER_ITEMS[("copy", "bptt")] == (4, 5, 7, 5) and PAPER_ITEMS[("copy", "dni")] == (13, 11, 15, 15)
    assert PAPER_ITEMS[("repeat-copy", "bptt")] == (4, 2, 16, 20)
    assert PAPER_ITEMS[("repeat-copy", "dni")] == (36, 30, 36, 56)
    for bad in (("ptb-char", 3), ("copy", -1), ("copy", 2.5)):
        with pytest.raises(ConfigError):
            paper_score(*bad)
    with pytest.raises(ConfigError, match="no repeats"):
        paper_score("copy", 3, repeats=2)


def test_the_report_gives_copy_rows_in_both_units():
    """A row from before `paper_score` was recorded gets it from `max_length`; a Repeat Copy row on the `length`
    curriculum has none ("–")."""
    base = {"method": "bptt", "samples": 10, "hidden_size": 8, "batch_size": 4, "max_minutes": 1.0}
    rows = [
        {**base, "task": "copy", "T": 2, "max_length": 2},
        {**base, "task": "copy", "T": 3, "max_length": 4, "paper_score": 7},
        {**base, "task": "repeat-copy", "T": 2, "max_length": 16, "repeat_curriculum": "both"},
        {**base, "task": "repeat-copy", "T": 3, "max_length": 3},  # the old `length` curriculum
    ]
    assert [row_paper_score(r) for r in rows] == [5, 7, 19, None]
    text = report(rows, quick=False, elapsed=None)
    assert "| bptt (ours) | 5 | 7 | – | – |" in text and "| bptt (ours) | 2 | 4 | – | – |" in text  # Copy
    assert "| bptt (paper) | 7 | 8 | 10 | 8 |" in text and "| bptt (paper) | 4 | 5 | 7 | 5 |" in text
    assert "| bptt | 2 | 2 | 5 | 7 | 10 |" in text  # items, paper score, the paper's, sequences
    assert "| bptt | 2 | 16 | 19 | 7 | 10 |" in text and "| bptt | 3 | 3 | – | 5 | 10 |" in text


def test_rerender_rewrites_the_tables_from_report_json_and_keeps_the_hand_written_part(tmp_path):
    row = {"task": "copy", "method": "dni", "T": 2, "max_length": 6, "samples": 10, "hidden_size": 8,
           "batch_size": 4, "max_minutes": 1.0}  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps([row]))
    hand = f"{HAND_WRITTEN}, by hand\n\nA paragraph.\n"
    (tmp_path / "report.md").write_text("# an old rendering\n\n| dni (ours) | 6 |\n\n" + hand)
    text = rerender(tmp_path).read_text()
    assert text.startswith("# Recurrent DNI") and "an old rendering" not in text and text.endswith("\n\n" + hand)
    assert "| dni (ours) | 9 | – | – | – |" in text and "| dni (ours) | 6 | – | – | – |" in text
