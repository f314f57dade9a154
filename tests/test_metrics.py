"""Metrics on hand-computed cases (METHOD.md §3; DATE-LM AUPRC)."""

import numpy as np
import pytest

from influcoder.core import metrics as M


def test_spearman_hand_cases():
    assert M.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1,2,3 ; y = 1,3,2 → d² = 0+1+1 = 2 → 1 − 6·2/(3·8) = 0.5
    assert M.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # constant column → 0 by convention
    assert M.spearman([1, 1, 1], [1, 2, 3]) == 0.0
    # ties: x = [1,1,2] → ranks [1.5,1.5,3]; Pearson with [1,2,3] = 0.8660254
    assert M.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)


def test_per_anchor_aggregated_query_specific():
    true = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    pred = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    assert M.per_anchor_spearman_values(pred, true).tolist() == pytest.approx([1.0, -1.0])
    assert M.per_anchor_spearman(pred, true) == pytest.approx(0.0)
    # true row means all 2 → constant → aggregated 0
    assert M.aggregated_spearman(pred, true) == 0.0
    # removing row means: pred becomes all zeros (constant columns) → 0
    assert M.query_specific_spearman(pred, true) == pytest.approx(0.0)
    assert M.query_specific_spearman(true, true) == pytest.approx(1.0)


def test_auprc_hand_computed():
    s = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([1, 0, 1, 0])
    # curve (recall, precision): (1, 1/2) (1, 2/3) (1/2, 1/2) (1/2, 1) (0, 1); trapezoids:
    # 0→1/2 at precision 1 = 0.5 ; 1/2→1 between 1/2 and 2/3 = 0.5·(1/2+2/3)/2
    assert M.auprc(s, y) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)
    # perfect ranking → 1; matrix input averaged over references first
    assert M.auprc([0.1, 0.9, 0.2], [0, 1, 0]) == pytest.approx(1.0)
    mat = np.array([[0.9, 0.9], [0.0, 1.6], [0.7, 0.7], [0.6, 0.6]])  # row means .9 .8 .7 .6
    assert M.auprc(mat, y) == pytest.approx(M.auprc(s, y))


def test_auprc_matches_sklearn_pipeline_and_differs_from_ap():
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.1
    s = rng.normal(size=200) + 1.5 * y
    p, r, _ = precision_recall_curve(y, s)
    assert M.auprc(s, y) == pytest.approx(auc(r, p))
    assert M.auprc(s, y) != pytest.approx(average_precision_score(y, s), abs=1e-6)


def test_precision_recall_at_k():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 1, 0, 1])
    assert M.precision_at_k(s, y, 1) == 1.0
    assert M.precision_at_k(s, y, 2) == 0.5
    assert M.precision_at_k(s, y, 3) == pytest.approx(2 / 3)
    assert M.recall_at_k(s, y, 3) == pytest.approx(2 / 3)
    assert M.recall_at_k(s, y, 5) == 1.0
    # ties broken by lower index first
    assert M.precision_at_k([1.0, 1.0], [0, 1], 1) == 0.0


def test_detection_errors():
    with pytest.raises(ValueError, match="no positive"):
        M.auprc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="labels"):
        M.auprc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.auprc([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="k must be"):
        M.precision_at_k([0.1, 0.2], [0, 1], 3)
