"""CL metrics against hand-worked matrices, literal loop implementations of the papers' formulas on
fresh random matrices, invariances and signs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clsharelora import metrics as M

# ---------------------------------------------------------------------------------------------------
# Hand-worked matrices (1-based task/experience indices in the comments, as in the papers).

# A: T=3, a model that learns each task and then forgets it.
A = [
    [0.1, 0.2, 0.3],  # row 0: before training
    [0.8, 0.3, 0.3],  # after experience 1
    [0.6, 0.9, 0.4],  # after experience 2
    [0.5, 0.7, 0.9],  # after experience 3
]
# ACC        = (0.5 + 0.7 + 0.9) / 3                        = 0.7
# BWT        = ((0.5 - 0.8) + (0.7 - 0.9)) / 2              = -0.25
# FWT        = ((R[1][2] - R[0][2]) + (R[2][3] - R[0][3])) / 2 = ((0.3-0.2) + (0.4-0.3)) / 2 = 0.1
# forgetting: task 1: max(0.8, 0.6) - 0.5 = 0.3; task 2: max(0.3, 0.9) - 0.7 = 0.2; mean = 0.25
# plasticity: task 1: R[1][1]-R[0][1] = 0.8-0.1 = 0.7; task 2: R[2][2]-R[1][2] = 0.9-0.3 = 0.6;
#             task 3: R[3][3]-R[2][3] = 0.9-0.4 = 0.5; mean = 0.6
# avg_acc    = [0.8, (0.6+0.9)/2, 0.7] = [0.8, 0.75, 0.7]

# B: T=3, task 1 peaks *after* it was trained and task 2 improves later: forgetting != -BWT.
B = [
    [0.0, 0.0, 0.0],
    [0.5, 0.1, 0.2],
    [0.7, 0.4, 0.1],
    [0.6, 0.6, 0.3],
]
# ACC        = (0.6 + 0.6 + 0.3) / 3                      = 0.5
# BWT        = ((0.6 - 0.5) + (0.6 - 0.4)) / 2            = 0.15
# FWT        = ((0.1 - 0.0) + (0.1 - 0.0)) / 2            = 0.1
# forgetting: task 1: max(0.5, 0.7) - 0.6 = 0.1; task 2: max(0.1, 0.4) - 0.6 = -0.2; mean = -0.05
# plasticity: task 1: 0.5-0.0 = 0.5; task 2: 0.4-0.1 = 0.3; task 3: 0.3-0.1 = 0.2; mean = 1.0/3
# avg_acc    = [0.5, (0.7+0.4)/2, (0.6+0.6+0.3)/3] = [0.5, 0.55, 0.5]

# C: T=2 NLL matrix (lower is better).
C = [
    [2.0, 3.0],
    [1.0, 2.5],
    [1.6, 1.2],
]
# ACC = (1.6 + 1.2) / 2 = 1.4;  BWT = 1.6 - 1.0 = 0.6 (NLL went up on task 1: forgetting)
# FWT = R[1][2] - R[0][2] = 2.5 - 3.0 = -0.5 (training task 1 lowered task 2's NLL: positive transfer)
# forgetting (lower is better) = R[2][1] - min(R[1][1]) = 1.6 - 1.0 = 0.6
# plasticity (lower is better, signed so positive = learned): task 1: R[0][1]-R[1][1] = 2.0-1.0 = 1.0;
#             task 2: R[1][2]-R[2][2] = 2.5-1.2 = 1.3; mean = 1.15
# (the literal max-formula would give 1.0 - 1.6 = -0.6)
# avg_acc = [1.0, 1.4]


@pytest.mark.parametrize(
    "R, expected",
    [
        (A, {"acc": 0.7, "bwt": -0.25, "fwt": 0.1, "forgetting": 0.25, "plasticity": 0.6,
             "avg_acc": [0.8, 0.75, 0.7]}),
        (B, {"acc": 0.5, "bwt": 0.15, "fwt": 0.1, "forgetting": -0.05, "plasticity": 1.0 / 3,
             "avg_acc": [0.5, 0.55, 0.5]}),
    ],
)
def test_hand_worked(R, expected):
    got = M.summarize(R)
    assert set(got) == {"acc", "bwt", "fwt", "forgetting", "plasticity", "avg_acc"}
    for key in ("acc", "bwt", "fwt", "forgetting", "plasticity"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert got["avg_acc"] == pytest.approx(expected["avg_acc"], abs=1e-12)
    assert M.acc(R) == pytest.approx(expected["acc"])
    assert M.bwt(R) == pytest.approx(expected["bwt"])
    assert M.fwt(R) == pytest.approx(expected["fwt"])
    assert M.forgetting(R) == pytest.approx(expected["forgetting"])
    assert M.plasticity(R) == pytest.approx(expected["plasticity"])
    np.testing.assert_allclose(M.average_accuracy(R), expected["avg_acc"])


def test_plasticity_per_task_hand_worked():
    np.testing.assert_allclose(M.plasticity_per_task(A), [0.7, 0.6, 0.5])
    np.testing.assert_allclose(M.plasticity_per_task(B), [0.5, 0.3, 0.2])
    # Partial: after 2 of 3 experiences task 3 was not trained yet.
    np.testing.assert_allclose(M.plasticity_per_task(A[:3]), [0.7, 0.6, np.nan])
    assert M.plasticity(A[:3]) == pytest.approx(0.65)
    # Only the row before training: nothing learned yet, nothing invented.
    assert np.isnan(M.plasticity_per_task(A[:1])).all() and math.isnan(M.plasticity(A[:1]))
    # One task: defined (unlike BWT/FWT/forgetting), 0.5 - 0.2.
    assert M.plasticity([[0.2], [0.5]]) == pytest.approx(0.3)


def test_forgetting_per_task_hand_worked():
    # A: [0.3, 0.2, undefined (last task)]
    np.testing.assert_allclose(M.forgetting_per_task(A), [0.3, 0.2, np.nan])
    np.testing.assert_allclose(M.forgetting_per_task(B), [0.1, -0.2, np.nan])


def test_nll_lower_is_better():
    got = M.summarize(C, higher_is_better=False)
    assert got["acc"] == pytest.approx(1.4)
    assert got["bwt"] == pytest.approx(0.6)
    assert got["fwt"] == pytest.approx(-0.5)
    assert got["forgetting"] == pytest.approx(0.6)
    assert got["plasticity"] == pytest.approx(1.15)
    np.testing.assert_allclose(M.plasticity_per_task(C, higher_is_better=False), [1.0, 1.3])
    assert M.plasticity(C) == pytest.approx(-1.15)  # the accuracy-signed formula reads NLL gains as negative
    assert got["avg_acc"] == pytest.approx([1.0, 1.4])
    assert M.forgetting(C) == pytest.approx(-0.6)  # literal formula, for the record
    # Lower-is-better forgetting is exactly the higher-is-better formula on -R.
    assert M.forgetting(C, higher_is_better=False) == pytest.approx(M.forgetting(-np.asarray(C)))


def test_partial_matrix_is_metrics_so_far():
    # A after 2 of 3 experiences: tasks 1..2 only.
    # ACC = (0.6+0.9)/2 = 0.75; BWT = 0.6-0.8 = -0.2; FWT = 0.3-0.2 = 0.1;
    # forgetting task 1 = max(R[1][1]) - R[2][1] = 0.8-0.6 = 0.2; avg_acc = [0.8, 0.75]
    got = M.summarize(A[:3])
    assert got["acc"] == pytest.approx(0.75)
    assert got["bwt"] == pytest.approx(-0.2)
    assert got["fwt"] == pytest.approx(0.1)
    assert got["forgetting"] == pytest.approx(0.2)
    assert got["avg_acc"] == pytest.approx([0.8, 0.75])
    assert M.experiences_done(A[:3]) == 2
    np.testing.assert_allclose(M.forgetting_per_task(A[:3]), [0.2, np.nan, np.nan])
    # After 1 experience: ACC = 0.8, the rest needs two tasks.
    one = M.summarize(A[:2])
    assert one["acc"] == pytest.approx(0.8) and one["avg_acc"] == pytest.approx([0.8])
    assert all(math.isnan(one[k]) for k in ("bwt", "fwt", "forgetting"))
    # Only the row before training: nothing defined, nothing invented.
    zero = M.summarize(A[:1])
    assert all(math.isnan(zero[k]) for k in ("acc", "bwt", "fwt", "forgetting"))
    assert zero["avg_acc"] == []


def _assert_same_summary(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-12, err_msg=key)


def test_partial_equals_truncated_stream():
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    T = int(rng.integers(3, 7))
    R = rng.random((T + 1, T))
    for k in range(1, T + 1):
        _assert_same_summary(M.summarize(R[: k + 1]), M.summarize(R[: k + 1, :k]))


def test_single_task_edge_case():
    R = [[0.2], [0.5]]
    got = M.summarize(R)
    assert got["acc"] == 0.5 and got["avg_acc"] == [0.5]
    assert math.isnan(got["bwt"]) and math.isnan(got["fwt"]) and math.isnan(got["forgetting"])


# ---------------------------------------------------------------------------------------------------
# Literal loop implementations, 1-based, written straight from the papers.


def _r(R, i, j):
    """R[i][j] with i = row (0 = before training), j = 1-based task."""
    return R[i][j - 1]


def loop_acc(R, T):
    return sum(_r(R, T, j) for j in range(1, T + 1)) / T


def loop_bwt(R, T):
    return sum(_r(R, T, i) - _r(R, i, i) for i in range(1, T)) / (T - 1)


def loop_fwt(R, T):
    return sum(_r(R, i - 1, i) - _r(R, 0, i) for i in range(2, T + 1)) / (T - 1)


def loop_forgetting(R, T):
    total = 0.0
    for j in range(1, T):
        best = max(_r(R, l, j) for l in range(1, T))
        total += best - _r(R, T, j)
    return total / (T - 1)


def loop_plasticity(R, T):
    return sum(_r(R, i, i) - _r(R, i - 1, i) for i in range(1, T + 1)) / T


def loop_avg_acc(R, T):
    return [sum(_r(R, k, j) for j in range(1, k + 1)) / k for k in range(1, T + 1)]


def test_against_literal_loops_on_random_matrices():
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    for _ in range(50):
        T = int(rng.integers(2, 9))
        R = rng.random((T + 1, T)).tolist()
        msg = f"seed={seed}, T={T}"
        assert M.acc(R) == pytest.approx(loop_acc(R, T), abs=1e-12), msg
        assert M.bwt(R) == pytest.approx(loop_bwt(R, T), abs=1e-12), msg
        assert M.fwt(R) == pytest.approx(loop_fwt(R, T), abs=1e-12), msg
        assert M.forgetting(R) == pytest.approx(loop_forgetting(R, T), abs=1e-12), msg
        assert M.plasticity(R) == pytest.approx(loop_plasticity(R, T), abs=1e-12), msg
        assert M.summarize(R)["avg_acc"] == pytest.approx(loop_avg_acc(R, T), abs=1e-12), msg
        # lower-is-better forgetting: best = min, sign flipped
        neg = [[-v for v in row] for row in R]
        assert M.forgetting(R, higher_is_better=False) == pytest.approx(loop_forgetting(neg, T), abs=1e-12)
        assert M.plasticity(R, higher_is_better=False) == pytest.approx(loop_plasticity(neg, T), abs=1e-12)
        # "so far": after k experiences, the mean over the k trained tasks
        k = int(rng.integers(1, T + 1))
        assert M.plasticity(R[: k + 1]) == pytest.approx(loop_plasticity(R, k), abs=1e-12), msg


# ---------------------------------------------------------------------------------------------------
# Invariances and signs.


def test_column_shift_leaves_bwt_fwt_forgetting_unchanged():
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    T = int(rng.integers(2, 7))
    R = rng.random((T + 1, T))
    j = int(rng.integers(0, T))
    c = float(rng.normal())
    S = R.copy()
    S[:, j] += c
    assert M.bwt(S) == pytest.approx(M.bwt(R), abs=1e-12)
    assert M.fwt(S) == pytest.approx(M.fwt(R), abs=1e-12)
    assert M.forgetting(S) == pytest.approx(M.forgetting(R), abs=1e-12)
    np.testing.assert_allclose(M.forgetting_per_task(S), M.forgetting_per_task(R), atol=1e-12)
    assert M.acc(S) == pytest.approx(M.acc(R) + c / T, abs=1e-12)  # ACC does move, by c/T


def test_never_changing_model():
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    T = int(rng.integers(2, 7))
    row = rng.random(T)
    R = np.tile(row, (T + 1, 1))
    assert M.bwt(R) == 0.0
    assert M.forgetting(R) == 0.0
    assert M.plasticity(R) == 0.0 and M.plasticity(R, higher_is_better=False) == 0.0
    assert M.fwt(R) == 0.0
    assert M.acc(R) == pytest.approx(row.mean())


def test_signs_for_a_forgetting_model():
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    T = int(rng.integers(2, 7))
    # Each task jumps to a high score when trained, then strictly decays afterwards.
    R = np.full((T + 1, T), 0.1)
    for j in range(T):
        for i in range(j + 1, T + 1):
            R[i, j] = 0.9 - 0.1 * (i - (j + 1)) - 0.01 * rng.random()
    assert M.bwt(R) < 0
    assert M.forgetting(R) > 0
    assert (M.forgetting_per_task(R)[: T - 1] > 0).all()
    # The same story told in NLL (lower is better): positive BWT, positive forgetting.
    N = 3.0 - R
    assert M.bwt(N) > 0
    assert M.forgetting(N, higher_is_better=False) > 0
    # ... and it learned every task when trained: positive plasticity in both scores.
    assert M.plasticity(R) > 0 and M.plasticity(N, higher_is_better=False) > 0
    np.testing.assert_allclose(M.plasticity_per_task(N, higher_is_better=False), M.plasticity_per_task(R))


# ---------------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "bad, match",
    [
        ([0.1, 0.2], "2-D"),
        ([[0.1, 0.2]] * 4, "between 1 and T\\+1"),
        (np.zeros((0, 3)), "between 1 and T\\+1"),
        (np.zeros((2, 0)), "at least one task"),
        ([[0.1, float("nan")], [0.2, 0.3]], "non-finite .* row 0, column 1"),
        ([[0.1, float("inf")]], "non-finite"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_validation_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        M.summarize(bad)


def test_accepts_a_dataframe_as_read_from_csv():
    df = pd.DataFrame(A, columns=["t1", "t2", "t3"], index=pd.Index(range(4), name="after"))
    _assert_same_summary(M.summarize(df), M.summarize(A))
