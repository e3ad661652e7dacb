"""End to end on the tiny model and real data: a 2-experience stream for two strategies writes the R
matrices, metrics that match the paper formulas, reloadable adapters and an Avalanche log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clsharelora import metrics, models, registry
from clsharelora.cli import main

COMMON = ["--model", "tiny-llama", "--no-progress", "--set", "train.batch_size=2",
          "--set", "loggers=text,tensorboard"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_stream_file):
    root = tmp_path_factory.mktemp("e2e")
    stream = tiny_stream_file
    code = main(["compare", "--stream", str(stream), "--strategies", "lora,sharelora:share_a+replay",
                 "--out", str(root / "cmp"), *COMMON])
    assert code == 0
    return root / "cmp"


@pytest.mark.parametrize("label, adapter, cl", [("lora", "lora", "naive"),
                                                ("sharelora-share_a-replay", "sharelora", "replay")])
def test_run_directory_is_complete(runs, label, adapter, cl):
    run = runs / label
    results = json.loads((run / "results.json").read_text())
    assert results["complete"] and results["tasks"] == ["gsm8k", "mmlu"]
    assert results["run"]["adapter"] == adapter and results["run"]["cl"] == cl
    for score in ("accuracy", "nll"):
        R = np.array(results["matrices"][score])
        assert R.shape == (3, 2)
        assert np.isfinite(R).all()
        csv = np.loadtxt(run / f"R_{score}.csv", delimiter=",", skiprows=1)[:, 1:]
        np.testing.assert_allclose(csv, R)
        expected = metrics.summarize(R, higher_is_better=score != "nll")
        for key in ("acc", "bwt", "fwt", "forgetting", "plasticity"):
            assert results["metrics"][score][key] == pytest.approx(expected[key], nan_ok=True)
    assert 0 <= np.min(results["matrices"]["accuracy"]) <= np.max(results["matrices"]["accuracy"]) <= 1
    # NLL of a random-init 49k-vocab model sits near log(V); it must at least be a real per-token NLL.
    assert 5 < np.mean(results["matrices"]["nll"]) < 20
    assert (run / "config.yaml").is_file() and (run / "environment.json").is_file()
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and "git_commit" in env
    assert "CL/ACC/nll" in (run / "log.txt").read_text() and "CL/PLASTICITY/nll" in (run / "log.txt").read_text()
    assert [p.name for p in sorted((run / "adapters").iterdir())] == ["exp_1", "exp_2"]


def test_costs_show_sharelora_is_smaller(runs):
    lora = json.loads((runs / "lora" / "results.json").read_text())["cost"]
    share = json.loads((runs / "sharelora-share_a-replay" / "results.json").read_text())["cost"]
    assert share["trainable_params"] < lora["trainable_params"] == share["lora_trainable_params"]
    assert share["optimizer_state_bytes"] < lora["optimizer_state_bytes"]
    for cost in (lora, share):
        assert cost["train_time_s"] > 0 and cost["peak_memory_bytes"] > 0


def test_saved_adapter_reloads_to_the_checkpointed_weights(runs):
    run = runs / "sharelora-share_a-replay"
    strategy = registry.create("sharelora", "adapter", variant="share_a")
    model = strategy.load(models.load_model("tiny-llama"), run / "adapters" / "exp_2")
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    saved = load_file(str(run / "checkpoints" / latest / "adapter.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(params[name].detach(), tensor), name


def test_avalanche_loggers_receive_the_metrics(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "lora" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"Accuracy/Task/gsm8k", "Nll/Task/mmlu", "CL/BWT/nll", "CL/FORGETTING/accuracy"} <= tags
    results = json.loads((runs / "lora" / "results.json").read_text())
    logged = [e.value for e in events.Scalars("Nll/Task/mmlu")]
    np.testing.assert_allclose(logged, [row[1]["nll"] for row in results["scores"]], rtol=1e-6)


def test_training_data_counts_are_in_the_results(runs):
    """results.json says, per experience, what was trained after the length policy (tiny stream: 256 tokens,
    every drawn example fits; the dropping itself is tested in tests/test_truncation.py)."""
    for label in ("lora", "sharelora-share_a-replay"):
        data = json.loads((runs / label / "results.json").read_text())["training_data"]
        assert list(data) == ["gsm8k", "mmlu"]
        for counts in data.values():
            assert counts["max_length"] == 256 and counts["kept"] + counts["dropped_too_long"] == counts["examples"] == 8
            assert 0 < counts["longest"] <= 256 and counts["target_tokens"] >= counts["kept"]


def test_the_report_reads_what_training_really_wrote(runs, tmp_path):
    """analysis on the output of a real training run, not on fixtures: every run loads, its matrices and
    metrics equal results.json's, and the report, figures and tables are written."""
    from clsharelora.analysis.report import main as report_main
    from clsharelora.analysis.runs import load_runs

    loaded = load_runs([runs])
    assert sorted(r.label for r in loaded) == ["lora", "sharelora/share_a+replay"]
    for run in loaded:
        data = json.loads((run.path / "results.json").read_text())
        assert not run.synthetic and run.complete
        for score in ("accuracy", "nll"):
            np.testing.assert_array_equal(run.matrices[score], np.array(data["matrices"][score]))
            stored = data["metrics"][score]
            for key, value in run.metrics(score).items():
                if key != "avg_acc":
                    assert (value is None or np.isnan(value)) if stored[key] is None else value == pytest.approx(stored[key])
    assert report_main([str(runs), "--out", str(tmp_path / "rep"), "--title", "e2e"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "sharelora/share_a+replay" in md and "SYNTHETIC" not in md
    assert len(list((tmp_path / "rep" / "figures").glob("*.png"))) >= 4


def test_every_row_has_its_items_and_standard_errors(runs):
    from clsharelora.evaluation.items import ratio_se
    from clsharelora.training.results import read_items

    run = runs / "lora"
    results = json.loads((run / "results.json").read_text())
    assert sorted(p.name for p in (run / "items").iterdir()) == ["row_0.npz", "row_1.npz", "row_2.npz"]
    for i, row in enumerate(results["scores"]):
        items = read_items(run, i)
        for cell in row:
            got = items[cell["task"]]
            assert len(got["id"]) == cell["n"] == len(got["correct"])
            assert cell["accuracy"] == pytest.approx(got["correct"].mean())
            assert cell["nll"] == pytest.approx(got["nll_sum"].sum() / got["nll_tokens"].sum())
            assert cell["accuracy_se"] == pytest.approx(np.sqrt(cell["accuracy"] * (1 - cell["accuracy"]) / cell["n"]))
            assert cell["nll_se"] == pytest.approx(ratio_se(got["nll_sum"], got["nll_tokens"]))
    # the same items at every row, so rows can be compared item by item
    assert all((read_items(run, i)["mmlu"]["id"] == read_items(run, 0)["mmlu"]["id"]).all() for i in (1, 2))


def test_report_tests_each_difference_against_the_noise_of_the_scored_items(runs, tmp_path):
    """Runs of one seed: the report says, per metric, whether the difference exceeds item noise, and
    draws 95% item bars (from the stored standard errors) on the curves."""
    import pandas as pd

    assert main(["report", str(runs / "lora"), str(runs / "sharelora-share_a-replay"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "beyond the noise of the scored items" in md and "evaluation noise only" in md
    table = pd.read_csv(tmp_path / "rep" / "item_level.csv")
    metric_rows = table[table["kind"] == "metric"]
    assert set(metric_rows["score"]) == {"accuracy", "nll"} and set(metric_rows["reference"]) == {"lora"}
    assert (metric_rows["low"] <= metric_rows["difference"]).all() and (metric_rows["difference"] <= metric_rows["high"]).all()
    assert set(table[table["kind"] == "final row"]["what"]) == {"gsm8k", "mmlu"}
    assert ("Within item noise" in md) or ("Beyond item noise" in md)
