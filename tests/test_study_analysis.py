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
    cells = []
    for label, forget in strategies.items():
        for seed in seeds:
            for k, order in enumerate(orders):
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
