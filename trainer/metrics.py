"""Quality metrics for anomaly scores: ROC curve, AUROC and F1 at a threshold.

Labels are true (or 1) for anomalous samples; a higher score means more
anomalous. Everything is plain numpy so the evaluation needs no extra
package. Images and pixels use the same functions: pixel labels and scores
are simply flattened first.
"""

from __future__ import annotations

import numpy as np


def _as_arrays(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return y, s


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U); ties count half.

    Raises `ValueError` when either class is empty, where the area is
    undefined.
    """
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both anomalous and normal samples")

    # Average ranks over runs of equal scores, so a tie adds 1/2 per pair.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    mean_rank = (starts + ends + 1) / 2.0  # 1-based ranks
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)

    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates, one point per distinct score.

    Points run from (0, 0) (threshold above every score) to (1, 1), with
    ties taken together, so the trapezoid area equals `auroc`.
    """
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("an ROC curve needs both anomalous and normal samples")

    order = np.argsort(-s, kind="mergesort")
    sorted_s = s[order]
    sorted_y = y[order]
    # The last index of each run of equal scores closes one point.
    last = np.r_[np.flatnonzero(np.diff(sorted_s)), s.size - 1]
    tp = np.cumsum(sorted_y)[last]
    fp = (last + 1) - tp
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of the anomalous class when `score >= threshold` flags a sample.

    Returns 0.0 when nothing is flagged and nothing is anomalous would be
    0/0; that case (no positives at all) is reported as 0.0 too.
    """
    y, s = _as_arrays(labels, scores)
    flagged = s >= threshold
    tp = int(np.sum(flagged & y))
    fp = int(np.sum(flagged & ~y))
    fn = int(np.sum(~flagged & y))
    if tp == 0:
        return 0.0
    return float(2 * tp / (2 * tp + fp + fn))
