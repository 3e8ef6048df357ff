"""Small statistics helpers for benchmarks."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` separating ``labels`` True from False (ties count half).

    NaN when one class is empty.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
