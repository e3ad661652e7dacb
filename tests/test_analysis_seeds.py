"""Seed statistics: the t quantile against published values and an independent numerical integral,
mean ± std / 95% interval and paired differences against plain numpy on random matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clsharelora.analysis.fake_runs import write_run
from clsharelora.analysis.runs import load_runs
from clsharelora.analysis.seeds import betainc, describe, paired_differences, seed_table, summarize_differences, t_cdf, t_quantile
from clsharelora import metrics

# Published two-sided 95% critical values t_{0.975, df} (any t table), and a few other quantiles.
KNOWN = [
    (0.975, 1, 12.7062047),
    (0.975, 2, 4.3026527),
    (0.975, 4, 2.7764451),
    (0.975, 9, 2.2621572),
    (0.975, 30, 2.0422725),
    (0.95, 10, 1.8124611),
    (0.995, 3, 5.8409093),
    (0.5, 7, 0.0),
    (0.025, 4, -2.7764451),
]


@pytest.mark.parametrize("p, df, expected", KNOWN)
def test_t_quantile_known_values(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=5e-7)


def test_t_quantile_large_df_tends_to_normal():
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963985, abs=1e-8)
    assert t_quantile(0.975, 1e4) == pytest.approx(1.960201, abs=1e-5)


def _t_pdf(x, df):
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return c * (1 + x * x / df) ** (-(df + 1) / 2)


def test_t_cdf_against_numerical_integral():
    """An independent reference: Simpson integration of the t density from 0 to x, plus 1/2."""
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    for _ in range(10):
        df = float(rng.uniform(1, 40))
        x = float(rng.uniform(-6, 6))
        grid = np.linspace(0.0, abs(x), 4001)
        y = np.array([_t_pdf(g, df) for g in grid])
        h = grid[1] - grid[0]
        integral = h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
        ref = 0.5 + math.copysign(integral, x)
        assert t_cdf(x, df) == pytest.approx(ref, abs=1e-9), f"seed={seed} df={df} x={x}"
        assert t_cdf(t_quantile(t_cdf(x, df), df), df) == pytest.approx(t_cdf(x, df), abs=1e-11)


def test_betainc_closed_forms():
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    for x in rng.random(5):
        assert betainc(1.0, 1.0, x) == pytest.approx(x)  # uniform
        assert betainc(2.0, 1.0, x) == pytest.approx(x**2)
        assert betainc(1.0, 3.0, x) == pytest.approx(1 - (1 - x) ** 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.9, 0)


def test_describe_matches_numpy():
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    x = rng.normal(size=5)
    st = describe(x)
    half = 2.7764451052 * x.std(ddof=1) / math.sqrt(5)
    assert (st.n, st.mean, st.std) == (5, pytest.approx(x.mean()), pytest.approx(x.std(ddof=1)))
    assert st.ci_low == pytest.approx(x.mean() - half) and st.ci_high == pytest.approx(x.mean() + half)
    one = describe([0.3])
    assert one.mean == 0.3 and math.isnan(one.std) and math.isnan(one.ci_low)
    with pytest.raises(ValueError, match="NaN"):
        describe([0.1, float("nan")])


T2 = 4.3026527297  # t_{0.975, 2}


@pytest.fixture
def three_seeds(tmp_path):
    """3 seeds x 2 strategies of random 4-task matrices (and NLL), plus the matrices themselves."""
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    mats = {}
    for seed in (0, 1, 2):
        for adapter, variant in (("lora", None), ("sharelora", "share_a")):
            acc, nll = rng.random((5, 4)), rng.uniform(0.5, 3.0, (5, 4))
            mats[(adapter, seed)] = (acc, nll)
            write_run(tmp_path, f"{adapter}-{seed}", acc.tolist(), nll.tolist(), adapter=adapter, variant=variant, seed=seed)
    return load_runs([tmp_path]), mats


def test_seed_table_matches_numpy(three_seeds):
    runs, mats = three_seeds
    table = seed_table(runs)
    assert len(table) == 2 * 2 * 5  # strategies x scores x metrics
    for adapter, label in (("lora", "lora"), ("sharelora", "sharelora/share_a")):
        for s_idx, score in enumerate(("accuracy", "nll")):
            per_seed = [metrics.summarize(mats[(adapter, s)][s_idx], higher_is_better=score == "accuracy") for s in range(3)]
            for m in ("acc", "bwt", "fwt", "forgetting", "plasticity"):
                v = np.array([p[m] for p in per_seed])
                row = table[(table.strategy == label) & (table.score == score) & (table.metric == m)].iloc[0]
                half = T2 * v.std(ddof=1) / math.sqrt(3)
                assert row["n"] == 3 and row["status"] == "complete" and row["seeds"] == "0,1,2"
                assert row["mean"] == pytest.approx(v.mean(), abs=1e-12)
                assert row["std"] == pytest.approx(v.std(ddof=1), abs=1e-12)
                assert row["ci95_low"] == pytest.approx(v.mean() - half, abs=1e-9)
                assert row["ci95_high"] == pytest.approx(v.mean() + half, abs=1e-9)


def test_paired_differences_match_by_seed(three_seeds):
    runs, mats = three_seeds
    diffs = paired_differences(runs)
    assert set(diffs["strategy"]) == {"sharelora/share_a"} and set(diffs["baseline"]) == {"lora"}
    summary = summarize_differences(diffs)
    for m in ("acc", "bwt", "fwt", "forgetting", "plasticity"):
        d = np.array([metrics.summarize(mats[("sharelora", s)][0])[m] - metrics.summarize(mats[("lora", s)][0])[m] for s in range(3)])
        got = diffs[(diffs.score == "accuracy") & (diffs.metric == m)].sort_values("seed")["difference"].to_numpy()
        np.testing.assert_allclose(got, d, atol=1e-12)
        row = summary[(summary.score == "accuracy") & (summary.metric == m)].iloc[0]
        assert row["mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert row["std"] == pytest.approx(d.std(ddof=1), abs=1e-12)
        assert row["ci95_high"] - row["mean"] == pytest.approx(T2 * d.std(ddof=1) / math.sqrt(3), abs=1e-9)


def test_unmatched_seeds_are_left_out_and_incomplete_cut_to_common_prefix(tmp_path):
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    la, lb = rng.random((5, 4)), rng.random((5, 4))
    sa = rng.random((3, 4))  # sharelora seed 0 stopped after 2 experiences
    write_run(tmp_path, "l0", la.tolist(), adapter="lora", seed=0)
    write_run(tmp_path, "l1", lb.tolist(), adapter="lora", seed=1)
    write_run(tmp_path, "s0", sa.tolist(), adapter="sharelora", seed=0)
    write_run(tmp_path, "s7", rng.random((5, 4)).tolist(), adapter="sharelora", seed=7)
    diffs = paired_differences(load_runs([tmp_path]))
    assert sorted(set(diffs["seed"])) == [0]  # 1 and 7 have no partner
    assert set(diffs["status"]) == {"incomplete (2/4 experiences)"}
    row = diffs[diffs.metric == "bwt"].iloc[0]
    assert row["difference"] == pytest.approx(metrics.bwt(sa) - metrics.bwt(la[:3]))
    # seed table of lora: both complete; of sharelora: cut to 2 experiences for both seeds
    table = seed_table(load_runs([tmp_path]))
    share = table[(table.strategy == "sharelora") & (table.metric == "acc")].iloc[0]
    assert share["status"] == "incomplete (2/4 experiences)"
    assert share["n"] == 2
