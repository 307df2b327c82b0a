"""ROC AUC by ranks and Youden's J, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from inference.metrics import roc_auc, youden_threshold


def brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(80) < 0.4
    scores = np.round(rng.random(80) + labels * 0.3, 1)  # rounding makes ties
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))


def test_auc_extremes_and_errors() -> None:
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5] * 4, [False, True, False, True]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [True, True])


def test_youden_threshold_separates() -> None:
    scores = np.array([0.05, 0.1, 0.3, 0.35, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1], dtype=bool)
    cut = youden_threshold(scores, labels)
    assert 0.35 < cut <= 0.6
    assert np.array_equal(scores >= cut, labels)
