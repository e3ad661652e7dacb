"""Study analysis: alignment by task name across orders, intervals and paired verdicts on cells whose
truth is known (written with analysis.fake_runs, marked synthetic by living only in tmp dirs)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from clsharelora.analysis import study
from clsharelora.analysis.fake_runs import write_run
from clsharelora.analysis.report import main as report_main

TASKS = ("a", "b", "c")


def matrix_for(order, forget, learn=0.5, start=0.1):
    """R (T+1 x T) in `order`'s column order: each task jumps by `learn` when trained and loses
    `forget[task]` per later experience."""
    T = len(order)
    R = np.full((T + 1, T), start)
    for row in range(1, T + 1):
        for j, task in enumerate(order):
            if row - 1 >= j:  # trained (experience j+1 = row j+1)
                R[row, j] = start + learn - forget[task] * (row - 1 - j)
    return R


def write_study(root, strategies, seeds, orders):
    """`strategies`: label -> forgetting per task, or -> a list of those, one per order."""
    cells = []
    for label, forgets in strategies.items():
        for seed in seeds:
            for k, order in enumerate(orders):
                forget = forgets[k] if isinstance(forgets, list) else forgets
                # a fixed seed per cell: hash() of a str differs per process (PYTHONHASHSEED), which made
                # the noise, and so whether the 'twin' difference came out resolved, change from run to run
                rng = np.random.default_rng(zlib.crc32(f"{label}/{seed}/{k}".encode()))
                noisy = {t: f + rng.normal(0, 0.002) for t, f in forget.items()}
                R = matrix_for(order, noisy)
                rel = f"runs/{label}/seed{seed}-order{k}"
                write_run(root / "runs" / label, f"seed{seed}-order{k}", R, tasks=order, experiences=order,
                          adapter=label, seed=seed, cost={"trainable_params": 1000 if label == "lora" else 500})
                cells.append({"key": f"{label}/seed{seed}-order{k}", "label": label, "seed": seed, "order": k,
                              "config": "", "run": rel})
    (root / "grid.json").write_text(json.dumps({"name": "t", "orders": [list(o) for o in orders],
                                                "strategies": list(strategies), "seeds": list(seeds),
                                                "cells": cells}))


def test_per_task_entries_are_aligned_by_name_across_orders(tmp_path):
    forget = {"a": 0.05, "b": 0.0, "c": 0.1}
    orders = [("a", "b", "c"), ("c", "a", "b")]
    write_study(tmp_path, {"lora": forget}, [0], orders)
    _, cells, missing = study.load_study_cells(tmp_path)
    assert not missing and len(cells) == 2
    table = study.per_task_table(cells)
    acc = table[table["score"] == "accuracy"].set_index(["order", "task"])
    # a single run in order 1 (c, a, b): forgetting of c after 2 later experiences = 2 * 0.1
    single = study.per_task_table([c for c in cells if c.order == 1])
    single = single[single["score"] == "accuracy"].set_index("task")
    for task in TASKS:
        assert acc.loc[(1, task), "forgetting"] == pytest.approx(single.loc[task, "forgetting"], nan_ok=True)
    assert acc.loc[(1, "c"), "forgetting"] == pytest.approx(0.2, abs=0.01)
    assert acc.loc[(0, "c"), "forgetting"] != acc.loc[(0, "c"), "forgetting"]  # last task: undefined (NaN)
    assert acc.loc[(0, "a"), "forgetting"] == pytest.approx(0.1, abs=0.01)


def test_paired_verdict_resolves_a_real_difference_and_not_noise(tmp_path):
    orders = [("a", "b", "c"), ("b", "c", "a")]
    write_study(tmp_path, {"lora": {"a": 0.1, "b": 0.1, "c": 0.1}, "share": {"a": 0.02, "b": 0.02, "c": 0.02},
                           "twin": {"a": 0.1, "b": 0.1, "c": 0.1}}, [0, 1, 2], orders)
    _, cells, _ = study.load_study_cells(tmp_path)
    pairs = study.paired_table(study.cell_table(cells), "lora")
    forgetting = pairs[(pairs["metric"] == "forgetting") & (pairs["score"] == "accuracy")].set_index("label")
    assert forgetting.loc["share", "pairs"] == 6
    assert forgetting.loc["share", "resolved"] and forgetting.loc["share", "mean_difference"] < 0
    assert not forgetting.loc["twin", "resolved"]
    text = " ".join(study.verdicts(pairs))
    assert "**Resolved**: share vs lora, forgetting (accuracy)" in text and "better" in text
    assert "Not resolved: twin vs lora, forgetting (accuracy)" in text
    answer = study.headline(pairs, study.strategy_summary(study.cell_table(cells)), "lora")
    share = next(s for s in answer if s.startswith("**share**") and "accuracy forgetting" in s)
    twin = next(s for s in answer if s.startswith("**twin**") and "accuracy forgetting" in s)
    assert "500 trainable parameters, 50.0% of lora's 1,000" in share
    assert "**resolved, it forgets less** than lora" in share
    assert "not resolved. At this size the study detects (80% power) a difference of" in twin


def test_study_report_writes_tables_figures_and_lists_missing_cells(tmp_path):
    orders = [("a", "b", "c"), ("b", "a", "c")]
    write_study(tmp_path / "s", {"lora": {"a": 0.1, "b": 0.1, "c": 0.1}, "share": {"a": 0.0, "b": 0.0, "c": 0.0}},
                [0, 1, 2], orders)
    grid = json.loads((tmp_path / "s" / "grid.json").read_text())
    grid["cells"].append({"key": "share/seed9-order0", "label": "share", "seed": 9, "order": 0, "config": "",
                          "run": "runs/share/seed9-order0"})
    (tmp_path / "s" / "grid.json").write_text(json.dumps(grid))
    assert report_main([str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 0
    for name in ("cells.csv", "per_task.csv", "strategies.csv", "paired.csv", "report.md", "report.html",
                 "figures/task_curves_accuracy.png", "figures/params_vs_forgetting_accuracy.png"):
        assert (tmp_path / "r" / name).is_file(), name
    md = (tmp_path / "r" / "report.md").read_text()
    assert "share/seed9-order0" in md and "## Answer" in md
    assert "**Resolved**: share vs lora, forgetting (accuracy)" in md
    assert "Identical: share vs lora, plasticity (accuracy)" in md


def test_too_few_pairs_say_so(tmp_path):
    write_study(tmp_path, {"lora": {"a": 0.1, "b": 0.1, "c": 0.1}, "share": {"a": 0.0, "b": 0.0, "c": 0.0}},
                [0], [("a", "b", "c")])
    _, cells, _ = study.load_study_cells(tmp_path)
    text = " ".join(study.verdicts(study.paired_table(study.cell_table(cells), "lora")))
    assert "Not resolved: share vs lora, forgetting (accuracy)" in text
    assert "with 1 pair(s) no test can resolve anything" in text


def test_a_clear_difference_is_resolved_with_fewer_than_6_pairs(tmp_path):
    """The decision rule is the paired t test alone: 4 pairs can resolve a difference 50x the noise. Before,
    the rule also required the sign-flip test's p < 0.05, which 4 pairs can never give (smallest p 0.125)."""
    write_study(tmp_path, {"lora": {"a": 0.1, "b": 0.1, "c": 0.1}, "share": {"a": 0.0, "b": 0.0, "c": 0.0}},
                [0, 1], [("a", "b", "c"), ("c", "b", "a")])
    _, cells, _ = study.load_study_cells(tmp_path)
    text = " ".join(study.verdicts(study.paired_table(study.cell_table(cells), "lora")))
    assert "**Resolved**: share vs lora, forgetting (accuracy)" in text


def test_a_reference_that_does_not_forget_makes_the_question_moot_and_says_so_first(tmp_path):
    """lora's scores rise after training (negative forgetting): the answer's first sentence says lora does
    not forget, and a resolved difference is named backward transfer, not 'forgets less' (before: the
    report said 'resolved, it forgets less' with no word on the reference's regime)."""
    orders = [("a", "b", "c"), ("b", "c", "a")]
    write_study(tmp_path / "s", {"lora": {"a": -0.02, "b": -0.02, "c": -0.02}, "share": {"a": -0.1, "b": -0.1, "c": -0.1}},
                [0, 1, 2], orders)
    assert report_main([str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    answer = md.split("## Answer\n\n", 1)[1]
    assert answer.startswith("**lora does not measurably forget here (accuracy)**: its accuracy forgetting is -0.02")
    assert "is moot on this score" in answer.split("\n\n")[0]
    assert "**resolved: more backward transfer** than lora" in answer
    assert "it forgets less" not in answer
    regime = study.reference_regime(*(lambda c: (study.cell_table(c), study.per_task_table(c)))(
        study.load_study_cells(tmp_path / "s")[1]), "lora")
    assert set(regime["task"]) == {"all", "a", "b", "c"} and not regime["forgets"].any()


def test_a_forgetting_reference_keeps_the_forgetting_wording(tmp_path):
    write_study(tmp_path / "s", {"lora": {"a": 0.1, "b": 0.1, "c": 0.1}, "share": {"a": 0.02, "b": 0.02, "c": 0.02}},
                [0, 1, 2], [("a", "b", "c")])
    assert report_main([str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 0
    answer = (tmp_path / "r" / "report.md").read_text().split("## Answer\n\n", 1)[1]
    assert answer.startswith("lora forgets (accuracy)") and "**resolved, it forgets less** than lora" in answer


def test_scores_at_or_below_chance_are_named_with_their_chance_level():
    import pandas as pd

    options = study.task_options(["mmlu", "gsm8k", "humaneval", "nosuch"])
    assert options == {"mmlu": 4}
    options = {"m": 4}
    items = pd.DataFrame([{"label": "share", "kind": "final row", "what": "m", "accuracy": 0.2, "reference_accuracy": 0.18},
                          {"label": "share", "kind": "final row", "what": "g", "accuracy": 0.0, "reference_accuracy": 0.0}])
    text = " ".join(study.chance_sentences(items, options, "lora"))
    assert "**At or below chance (m)**: final accuracy lora 0.180, share 0.200 against chance 0.250 (1/4 options)" in text
    assert "(g)" not in text   # generation: no chance level
    items.loc[0, ["accuracy", "reference_accuracy"]] = 0.6
    assert study.chance_sentences(items, options, "lora") == []


def test_orders_are_a_factor_and_disagreeing_orders_get_no_pooled_verdict(tmp_path):
    """share forgets less than lora in order 0 and more in order 1: per-order intervals, the interaction
    test, and no pooled 'forgets less/more' (before: the six pairs were pooled as if exchangeable)."""
    lora = {"a": 0.1, "b": 0.1, "c": 0.1}
    orders = [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")]
    write_study(tmp_path, {"lora": lora, "share": [{"a": 0.02, "b": 0.02, "c": 0.02}, {"a": 0.13, "b": 0.13, "c": 0.13},
                                                   {"a": 0.13, "b": 0.13, "c": 0.13}]}, [0, 1, 2], orders)
    _, cells, _ = study.load_study_cells(tmp_path)
    table = study.cell_table(cells)
    by_order = study.order_table(table, "lora")
    f = by_order[(by_order["metric"] == "forgetting") & (by_order["label"] == "share")].set_index("order")
    assert f.loc[0, "t_high"] < 0 < f.loc[1, "t_low"] and f.loc[2, "t_low"] > 0
    assert f.loc[0, "interaction_p"] < 0.05          # 3 orders x 3 seeds: the test can reject
    pairs = study.paired_table(table, "lora")
    answer = " ".join(study.headline(pairs, study.strategy_summary(table), "lora", set(), by_order))
    assert "**the task orders disagree**, so no pooled verdict" in answer and "it forgets" not in answer
    assert "Per order: order 0: -0.11" in answer and "order x strategy interaction: permutation p = " in answer


def test_answer_prior_nll_is_the_letter_frequencies_cross_entropy():
    """The diagnostic behind docs/studies.md "The replay anomaly": NLL of the training letter prior."""
    import math

    from clsharelora.analysis.answer_prior import FLOOR, prior_nll

    assert prior_nll("AAAB", "AB") == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)
    assert prior_nll("ABCD", "DCBA") == pytest.approx(math.log(4))
    assert prior_nll("AAAA", "B") == pytest.approx(-math.log(FLOOR))
