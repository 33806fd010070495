"""Which layers each of K stages holds."""

from __future__ import annotations


def split_layers(n_layers: int, k: int) -> list[range]:
    """Cut ``n_layers`` layers into ``k`` contiguous stages whose sizes differ by at most one.

    The last ``n_layers % k`` stages get the extra layer: an FCN's output layer is small, so the last stage is the
    one that can best take one more. Raises ValueError if ``k > n_layers`` or either is < 1.
    """
    if n_layers < 1 or k < 1:
        raise ValueError(f"need at least 1 layer and 1 stage, got {n_layers} layer(s) and {k} stage(s)")
    if k > n_layers:
        raise ValueError(
            f"cannot split {n_layers} layer(s) into {k} stages: every stage needs at least one layer "
            f"(use at most {n_layers} stages, or more layers)"
        )
    base, extra = divmod(n_layers, k)
    stages, start = [], 0
    for i in range(k):
        size = base + (1 if i >= k - extra else 0)
        stages.append(range(start, start + size))
        start += size
    return stages


def cuts_of(blocks: list[range]) -> list[int]:
    """The layer indices after which a chain of these blocks is cut."""
    return [b[-1] for b in blocks[:-1]]
