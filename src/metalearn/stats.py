"""Statistics of scores, below the modules that report them (evaluation, tables, figures, studies)."""
from __future__ import annotations

import math


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n), as in the papers."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * std / math.sqrt(n)
