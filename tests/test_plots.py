"""Figures: the points that can be drawn, and a synthesizer-quality figure from folding's sparse diagnostics."""

from __future__ import annotations

import math

from synthgrad import plots


def test_drawable_points_drop_nan_and_nonpositive_on_a_log_axis() -> None:
    nan = math.nan
    assert plots.drawable_points([0, 50, 100, 150], [nan, 0.3, 0.0, 0.2]) == ([50, 150], [0.3, 0.2])
    assert plots.drawable_points([0, 50, 100], [-0.1, nan, 0.0], log=False) == ([0, 100], [-0.1, 0.0])


def test_gradient_quality_writes_a_figure_from_nan_interleaved_diagnostics(tmp_path) -> None:
    """A smoke test: the figure is written; what it draws is pinned by the test above."""
    rows = [
        {"step": 50 * t, "true_cosine": [0.1, 0.2], "sg_loss": [1.0 / (t + 1), math.nan] if t % 2 else [math.nan, 0.5]}
        for t in range(6)
    ]
    plots.gradient_quality(rows, tmp_path / "q.png", "t")
    assert (tmp_path / "q.png").stat().st_size > 1000
