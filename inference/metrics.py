"""Binary classification metrics without scikit-learn: ROC AUC by ranks, Youden's J threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve = Mann–Whitney U / (n₊·n₋), ties counted half (average ranks)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative samples")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty_like(s)
    sorted_s = s[order]
    i = 0
    while i < s.size:  # average ranks over ties
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def youden_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """The cut maximising Youden's J = sensitivity + specificity − 1 (positive when score ≥ cut).

    The cut is placed midway between the two distinct scores it separates, so that it does not sit
    on a validation sample's score.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a threshold needs both positive and negative samples")
    distinct = np.unique(s)  # ascending
    best_j, best_cut = -1.0, float(distinct[0])
    for k, cut in enumerate(distinct):
        pred = s >= cut
        j = (pred & y).sum() / n_pos + (~pred & ~y).sum() / n_neg - 1.0
        if j > best_j:
            below = distinct[k - 1] if k > 0 else cut
            best_j, best_cut = j, float((cut + below) / 2.0)
    return best_cut
