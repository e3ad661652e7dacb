"""The report end to end on run dirs built from known matrices: table numbers, valid PNGs of sensible
size, incomplete runs flagged and never drawn as zero, CLI exit codes."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

import clsharelora.analysis.style as style
from clsharelora.analysis.curves import plot_forgetting_curves
from clsharelora.analysis.fake_runs import write_run
from clsharelora.analysis.heatmaps import plot_heatmaps
from clsharelora.analysis.report import main
from clsharelora.analysis.runs import load_runs
from clsharelora.analysis.tables import comparison_markdown, comparison_table
from clsharelora import metrics

MIB = 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Hand-worked 4-task matrices (accuracy).
LORA = [
    [0.10, 0.20, 0.30, 0.40],
    [0.80, 0.20, 0.30, 0.40],
    [0.60, 0.90, 0.30, 0.40],
    [0.50, 0.70, 0.70, 0.40],
    [0.40, 0.60, 0.50, 0.90],
]
# ACC = (0.4+0.6+0.5+0.9)/4 = 0.6
# BWT = ((0.4-0.8) + (0.6-0.9) + (0.5-0.7)) / 3 = (-0.4-0.3-0.2)/3 = -0.3
# FWT = ((R1,2-R0,2) + (R2,3-R0,3) + (R3,4-R0,4)) / 3 = (0 + 0 + 0)/3 = 0
# forgetting = ((0.8-0.4) + (0.9-0.6) + (0.7-0.5)) / 3 = 0.3
# plasticity = ((0.8-0.1) + (0.9-0.2) + (0.7-0.3) + (0.9-0.4)) / 4 = 2.3/4 = 0.575
SHARE = [
    [0.10, 0.20, 0.30, 0.40],
    [0.70, 0.30, 0.30, 0.40],
    [0.65, 0.80, 0.40, 0.40],
    [0.60, 0.75, 0.70, 0.50],
    [0.60, 0.70, 0.65, 0.80],
]
# ACC = (0.6+0.7+0.65+0.8)/4 = 0.6875
# BWT = ((0.6-0.7) + (0.7-0.8) + (0.65-0.7)) / 3 = -0.25/3 = -0.083333...
# FWT = ((0.3-0.2) + (0.4-0.3) + (0.5-0.4)) / 3 = 0.1
# forgetting = ((0.7-0.6) + (0.8-0.7) + (0.7-0.65)) / 3 = 0.25/3 = 0.083333...
# plasticity = ((0.7-0.1) + (0.8-0.3) + (0.7-0.4) + (0.8-0.5)) / 4 = 1.7/4 = 0.425
INCOMPLETE = [row[:] for row in LORA[:3]]  # lora+replay stopped after 2 of 4 experiences
# so far over tasks 1..2: ACC = (0.6+0.9)/2 = 0.75, BWT = 0.6-0.8 = -0.2, FWT = R1,2-R0,2 = 0.2-0.2 = 0,
# forgetting = 0.8 - 0.6 = 0.2, plasticity = ((0.8-0.1) + (0.9-0.2)) / 2 = 0.7


def _nll(acc):
    return (3.0 - 2.0 * np.asarray(acc)).tolist()


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "demo-lora", LORA, _nll(LORA), adapter="lora", seed=0,
              cost={"trainable_params": 1000, "lora_trainable_params": 1000, "peak_memory_bytes": 300 * MIB, "train_time_s": 12.5})
    write_run(root, "demo-sharelora", SHARE, _nll(SHARE), adapter="sharelora", variant="share_a", seed=0,
              cost={"trainable_params": 250, "lora_trainable_params": 1000, "peak_memory_bytes": 290 * MIB, "train_time_s": 11.0})
    write_run(root, "demo-replay", INCOMPLETE, _nll(INCOMPLETE), adapter="lora", cl="replay", seed=0,
              cost={"trainable_params": 1000, "lora_trainable_params": 1000})
    return root


@pytest.fixture(scope="module")
def report(run_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main([str(run_root), "--out", str(out), "--title", "Test report"]) == 0
    return out


def test_comparison_table_numbers(run_root):
    table = comparison_table(load_runs([run_root])).set_index("strategy")
    assert list(table.index) == ["lora", "lora+replay", "sharelora/share_a"]
    lora, share, rep = table.loc["lora"], table.loc["sharelora/share_a"], table.loc["lora+replay"]
    # hand values
    assert lora["accuracy_acc"] == pytest.approx(0.6)
    assert lora["accuracy_bwt"] == pytest.approx(-0.3)
    assert lora["accuracy_fwt"] == pytest.approx(0.0, abs=1e-12)
    assert lora["accuracy_forgetting"] == pytest.approx(0.3)
    assert share["accuracy_acc"] == pytest.approx(0.6875)
    assert share["accuracy_bwt"] == pytest.approx(-0.25 / 3)
    assert share["accuracy_fwt"] == pytest.approx(0.1)
    assert share["accuracy_forgetting"] == pytest.approx(0.25 / 3)
    assert lora["accuracy_plasticity"] == pytest.approx(0.575)
    assert share["accuracy_plasticity"] == pytest.approx(0.425)
    assert rep["accuracy_plasticity"] == pytest.approx(0.7)
    assert rep["accuracy_acc"] == pytest.approx(0.75) and rep["accuracy_bwt"] == pytest.approx(-0.2)
    assert rep["accuracy_forgetting"] == pytest.approx(0.2) and rep["accuracy_fwt"] == pytest.approx(0.0, abs=1e-12)
    # NLL = 3 - 2·acc: ACC, BWT, FWT scale by -2 and forgetting (lower is better) by +2
    assert share["nll_acc"] == pytest.approx(3 - 2 * 0.6875)
    assert share["nll_bwt"] == pytest.approx(-2 * (-0.25 / 3))
    assert share["nll_fwt"] == pytest.approx(-2 * 0.1)
    assert share["nll_forgetting"] == pytest.approx(2 * 0.25 / 3)
    assert share["nll_plasticity"] == pytest.approx(2 * 0.425)  # signed so that positive = learned
    # and the library's own numbers on the same matrices
    for key, val in metrics.summarize(SHARE).items():
        if key != "avg_acc":
            assert share[f"accuracy_{key}"] == pytest.approx(val)
    # cost
    assert share["trainable_params"] == 250 and share["pct_of_lora"] == pytest.approx(25.0)
    assert share["peak_memory_mib"] == pytest.approx(290.0) and share["train_time_s"] == pytest.approx(11.0)
    assert lora["pct_of_lora"] == pytest.approx(100.0)
    assert np.isnan(rep["peak_memory_mib"])  # not recorded: unknown, not zero
    # status
    assert lora["status"] == "complete" and rep["status"] == "incomplete (2/4 experiences)"


def test_comparison_markdown_formats_units_and_unknowns(run_root):
    md = comparison_markdown(comparison_table(load_runs([run_root])))
    lines = md.strip().splitlines()
    assert lines[0].startswith("| strategy |") and "% of LoRA" in lines[0] and "peak memory (MiB)" in lines[0]
    share = next(line for line in lines if line.startswith("| sharelora/share_a"))
    assert "| 25.0% |" in share and "| 0.688 |" in share and "| -0.083 |" in share
    rep = next(line for line in lines if line.startswith("| lora+replay"))
    assert "incomplete (2/4 experiences)" in rep and "| — |" in rep


def test_report_files(report):
    for name in ("report.md", "report.html", "comparison.md", "comparison.csv", "scores_long.csv"):
        assert (report / name).is_file(), name
    assert not (report / "seeds.csv").exists()  # one seed per strategy: no seed statistics
    figures = sorted(p.name for p in (report / "figures").iterdir())
    assert figures == [
        "curves_accuracy_demo_smollm2-135m.png",
        "curves_nll_demo_smollm2-135m.png",
        "heatmap_accuracy_demo_smollm2-135m.png",
        "heatmap_nll_demo_smollm2-135m.png",
    ]
    for f in figures:
        path = report / "figures" / f
        assert path.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(path)
        assert img.shape[0] >= 300 and img.shape[1] >= 400, (f, img.shape)
        assert img[..., :3].std() > 0.05  # not a blank canvas
    md = (report / "report.md").read_text()
    assert md.startswith("# Test report")
    for f in figures:
        assert f"](figures/{f})" in md
    assert "incomplete (2/4 experiences)" in md
    html = (report / "report.html").read_text()
    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(blobs) == 4 and all(base64.b64decode(b)[:8] == PNG_MAGIC for b in blobs)
    assert "<table>" in html and "incomplete (2/4 experiences)" in html
    csv = pd.read_csv(report / "comparison.csv")
    assert csv.loc[csv.strategy == "lora", "accuracy_bwt"].item() == pytest.approx(-0.3)
    long = pd.read_csv(report / "scores_long.csv")
    assert long[long.run == "demo-replay"]["after"].max() == 2  # nothing stored past the last experience


def test_figures_are_deterministic(run_root, tmp_path):
    runs = load_runs([run_root])
    a = plot_heatmaps(runs, "accuracy", tmp_path / "a.png").read_bytes()
    b = plot_heatmaps(runs, "accuracy", tmp_path / "b.png").read_bytes()
    assert a == b


def test_incomplete_run_is_not_drawn_as_zero(run_root, monkeypatch, tmp_path):
    figs = []
    monkeypatch.setattr(style, "save", lambda fig, path: figs.append(fig))
    runs = load_runs([run_root])
    plot_forgetting_curves(runs, "accuracy", tmp_path / "c.png")
    plot_heatmaps(runs, "accuracy", tmp_path / "h.png")
    curves, heat = figs
    for ax, task_col in zip(curves.axes[:4], range(4)):
        line = next(l for l in ax.get_lines() if l.get_label().startswith("lora+replay"))
        x, y = line.get_xdata(), line.get_ydata()
        assert list(x) == [0, 1, 2]  # stops at the last finished experience
        np.testing.assert_allclose(y, np.asarray(INCOMPLETE)[:, task_col])
        assert "[incomplete 2/4]" in line.get_label()
    panel = next(ax for ax in heat.axes if ax.get_title().startswith("lora+replay"))
    data = panel.get_images()[0].get_array()
    assert data.mask[3:].all() and not data.mask[:3].any()
    assert sum(t.get_text() == "not run" for t in panel.texts) == 2 * 4
    style.plt.close("all")


def test_seed_tables_written_with_several_seeds(tmp_path, monkeypatch):
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    for seed in range(3):
        write_run(tmp_path / "runs", f"l{seed}", rng.random((5, 4)).tolist(), adapter="lora", seed=seed)
        write_run(tmp_path / "runs", f"s{seed}", rng.random((5, 4)).tolist(), adapter="sharelora", variant="share_a", seed=seed)
    out = tmp_path / "out"
    _stub_plots(monkeypatch)  # figures are covered above; here only the tables matter
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    seeds = pd.read_csv(out / "seeds.csv")
    assert set(seeds["strategy"]) == {"lora", "sharelora/share_a"} and (seeds["n"] == 3).all()
    paired = pd.read_csv(out / "paired_differences.csv")
    assert len(paired) == 3 * 5  # 3 seeds x 5 metrics, accuracy only
    assert "sharelora/share_a − lora" in (out / "seeds.md").read_text()
    assert "Paired differences" in (out / "report.md").read_text()


def test_malformed_results_exit_nonzero_naming_file(tmp_path, capsys):
    d = write_run(tmp_path, "bad", LORA)
    f = d / "results.json"
    data = json.loads(f.read_text())
    data["matrices"]["accuracy"][1] = [0.1, 0.2]
    f.write_text(json.dumps(data))
    assert main([str(d), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "matrices.accuracy" in err and "row 1" in err
    assert not (tmp_path / "out" / "report.md").exists()


def test_missing_run_dir_exit_nonzero(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope" in capsys.readouterr().err


def _stub_plots(monkeypatch):
    import clsharelora.analysis.report as rep

    def fake_plot(runs, score, path, title=None):
        path.write_bytes(PNG_MAGIC)
        return path

    monkeypatch.setattr(rep, "plot_forgetting_curves", fake_plot)
    monkeypatch.setattr(rep, "plot_heatmaps", fake_plot)


def test_run_without_scores_is_listed_not_analysed(tmp_path, monkeypatch):
    _stub_plots(monkeypatch)
    write_run(tmp_path / "runs", "ok", LORA, adapter="lora")
    d = write_run(tmp_path / "runs", "fresh", LORA, adapter="sharelora")
    data = json.loads((d / "results.json").read_text())
    data["matrices"] = {"accuracy": [], "nll": []}
    data["complete"] = False
    (d / "results.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "Runs without any score yet" in md and "fresh" in md
    assert list(pd.read_csv(out / "comparison.csv")["strategy"]) == ["lora"]
    # all runs empty: a clear error, not an empty report
    (tmp_path / "runs" / "ok" / "results.json").unlink()
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out2")]) == 2


def test_fixture_runs_are_written_through_the_results_store_and_reported_as_synthetic(tmp_path):
    import json

    from clsharelora.training.results import ResultsStore

    run = write_run(tmp_path / "runs", "fixture", [[0.1, 0.2], [0.5, 0.2], [0.4, 0.6]], [[2.0, 2.0], [1.0, 2.0],
                    [1.5, 1.0]], tasks=("gsm8k", "mmlu"), experiences=("gsm8k", "mmlu"))
    data = json.loads((run / "results.json").read_text())
    assert data["run"]["synthetic"] is True
    again = ResultsStore.from_json(data).to_json()   # the one writer round-trips what the fixture wrote
    assert again == data
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    assert "**Synthetic runs**" in (tmp_path / "rep" / "report.md").read_text()
    assert "SYNTHETIC" in (tmp_path / "rep" / "report.md").read_text()


def test_the_report_says_under_its_title_what_it_can_and_cannot_show(report):
    """One line under the title, from the runs' own sizes (fake runs: 50 items, one seed)."""
    md = (report / "report.md").read_text()
    first = md.split("\n\n")[1]
    assert first.startswith("**What this report can show**: that every strategy trains and is scored end to end, "
                            "and the NLL forgetting signal")
    assert "1 seed(s) per strategy and n = 50 scored items per task, so one accuracy's 95% interval is up to ±14 " \
           "points wide" in first


def test_flat_accuracy_panels_get_the_whole_axis_and_bars_stay_in_range():
    from clsharelora.analysis.curves import clipped_bars, flat_panel_limits

    assert flat_panel_limits("accuracy", np.array([0.0, 0.0, np.nan])) == (-0.05, 1.05)
    assert flat_panel_limits("accuracy", np.array([0.0, 0.1])) is None
    assert flat_panel_limits("nll", np.array([2.0, 2.0])) is None
    bars = clipped_bars(np.array([0.0, 0.05, 0.5, 0.98]), np.full(4, 0.1), "accuracy")
    np.testing.assert_allclose(bars, [[0.0, 0.05, 0.1, 0.1], [0.1, 0.1, 0.1, 0.02]])
    np.testing.assert_allclose(clipped_bars(np.array([0.05]), np.array([0.1]), "nll"), [[0.05], [0.1]])


def test_differences_print_with_enough_digits_and_no_p_of_zero():
    from clsharelora.analysis.tables import p_text, signed

    assert signed(3e-6) == "+3.00e-06" and signed(-0.01234) == "-0.0123" and signed(-1e-17) == "0"
    assert p_text(0.0, 2000) == "p < 0.001" and p_text(0.0312) == "p = 0.0312"


def test_single_run_report_names_tasks_at_or_below_chance(tmp_path):
    """MMLU at 0.20 accuracy (4 options: chance 0.25) is named with its chance level; MMLU-Pro at 0.9 and the
    generation tasks are not. Before, the report printed accuracy differences there without a word."""
    from clsharelora.analysis.report import chance_lines

    R = [row[:] for row in LORA]
    R[-1][2], R[-1][3] = 0.20, 0.9
    write_run(tmp_path, "r", R, _nll(R))
    text = " ".join(chance_lines(load_runs([tmp_path / "r"])))
    assert text.startswith("**At or below chance (mmlu)**: final accuracy lora 0.200 against chance 0.250 (1/4 options)")
    assert "mmlu_pro" not in text and "gsm8k" not in text
