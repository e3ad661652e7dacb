"""Loading run directories: validation errors name the file and field, grouping, labels, and missing
experiences staying missing (never zeros)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clsharelora.analysis.fake_runs import write_run
from clsharelora.analysis.runs import by_setting, by_strategy, find_run_dirs, load_run, load_runs, mean_matrix, strategy_label, tidy
from clsharelora import metrics
from clsharelora.errors import DataError

TASKS3 = ("t1", "t2", "t3")
EXPS3 = ("e1", "e2", "e3")
A = [[0.1, 0.2, 0.3], [0.8, 0.3, 0.3], [0.6, 0.9, 0.4], [0.5, 0.7, 0.9]]


def _write(tmp_path, name="r", acc=A, **kw):
    kw.setdefault("tasks", TASKS3)
    kw.setdefault("experiences", EXPS3)
    return write_run(tmp_path, name, acc, **kw)


def test_load_roundtrip(tmp_path):
    nll = (2.0 - np.asarray(A)).tolist()
    d = _write(tmp_path, nll=nll, adapter="sharelora", variant="share_a", seed=3,
               cost={"trainable_params": 10, "peak_memory_bytes": 2**21})
    r = load_run(d)
    assert (r.stream, r.model, r.adapter, r.variant, r.cl, r.seed) == ("demo", "smollm2-135m", "sharelora", "share_a", "naive", 3)
    assert r.tasks == TASKS3 and r.T == 3 and r.done == 3 and r.complete and r.status == "complete"
    np.testing.assert_array_equal(r.matrices["accuracy"], A)
    np.testing.assert_array_equal(r.matrices["nll"], nll)
    assert r.cost["trainable_params"] == 10 and np.isnan(r.cost["train_time_s"])
    assert r.metrics("accuracy")["bwt"] == pytest.approx(-0.25)
    assert r.metrics("nll") == metrics.summarize(nll, higher_is_better=False)
    assert r.label == "sharelora/share_a"
    assert load_run(d / "results.json").name == r.name


def test_labels():
    assert strategy_label("lora", None, "naive") == "lora"
    assert strategy_label("lora", "", "naive") == "lora"
    assert strategy_label("sharelora", "share_a", "naive") == "sharelora/share_a"
    assert strategy_label("lora", None, "replay") == "lora+replay"
    assert strategy_label("sharelora", "share_ab", "ewc") == "sharelora/share_ab+ewc"


def test_incomplete_run_keeps_missing_rows_missing(tmp_path):
    r = load_run(_write(tmp_path, acc=A[:2]))
    assert r.done == 1 and not r.complete and r.status == "incomplete (1/3 experiences)"
    frame = tidy([r])
    assert sorted(frame["after"].unique()) == [0, 1]  # no rows invented for experiences 2 and 3
    assert len(frame) == 2 * 3
    mean, std, n = mean_matrix([r], "accuracy")
    np.testing.assert_array_equal(mean[:2], A[:2])
    assert np.isnan(mean[2:]).all() and np.isnan(std).all()
    assert n.tolist() == [1, 1, 0, 0]


def test_mean_matrix_over_seeds_with_one_incomplete(tmp_path):
    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    R1, R2 = rng.random((4, 3)), rng.random((4, 3))
    runs = [load_run(_write(tmp_path, "a", R1.tolist(), seed=0)), load_run(_write(tmp_path, "b", R2[:3].tolist(), seed=1))]
    mean, std, n = mean_matrix(runs, "accuracy")
    np.testing.assert_allclose(mean[:3], (R1[:3] + R2[:3]) / 2)
    np.testing.assert_allclose(mean[3], R1[3])  # only seed 0 got there
    np.testing.assert_allclose(std[:3], np.std([R1[:3], R2[:3]], axis=0, ddof=1))
    assert np.isnan(std[3]).all() and n.tolist() == [2, 2, 2, 1]


def test_find_and_group(tmp_path):
    _write(tmp_path / "runs", "lora0", adapter="lora", seed=0)
    _write(tmp_path / "runs", "lora1", adapter="lora", seed=1)
    _write(tmp_path / "runs", "share0", adapter="sharelora", variant="share_a", seed=0)
    _write(tmp_path / "runs", "big", adapter="lora", seed=0, stream="llama2", model="llama2-7b")
    assert len(find_run_dirs(tmp_path / "runs")) == 4
    runs = load_runs([tmp_path / "runs", tmp_path / "runs" / "lora0"])  # the same dir twice counts once
    assert len(runs) == 4
    settings = by_setting(runs)
    assert set(settings) == {("demo", "smollm2-135m"), ("llama2", "llama2-7b")}
    groups = by_strategy(settings[("demo", "smollm2-135m")])
    assert list(groups) == ["lora", "sharelora/share_a"]
    assert [r.seed for r in groups["lora"]] == [0, 1]


def test_duplicate_run_is_refused(tmp_path):
    _write(tmp_path, "x", seed=0)
    _write(tmp_path, "y", seed=0)
    with pytest.raises(DataError, match="same run .*seed=0"):
        load_runs([tmp_path])


def test_stray_files_from_a_glob_are_skipped(tmp_path):
    _write(tmp_path / "runs", "a")
    (tmp_path / "runs" / "notes.md").write_text("x")
    skipped = []
    runs = load_runs(sorted((tmp_path / "runs").iterdir()), skipped)
    assert [r.name for r in runs] == ["a"] and skipped == [tmp_path / "runs" / "notes.md"]
    with pytest.raises(DataError, match="no run directory among"):
        load_runs([tmp_path / "runs" / "notes.md"])


def test_missing_dir_and_empty_dir(tmp_path):
    with pytest.raises(DataError, match="no such run directory"):
        load_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no results.json"):
        load_runs([tmp_path / "empty"])


def _corrupt(tmp_path, edit):
    d = _write(tmp_path)
    f = d / "results.json"
    data = json.loads(f.read_text())
    edit(data)
    f.write_text(json.dumps(data))
    return d, f


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("matrices"), "'matrices'"),
        (lambda d: [d["matrices"].pop(k, None) for k in ("accuracy", "nll")], "'matrices' holds none"),
        (lambda d: d["matrices"]["accuracy"][2].pop(), "'matrices.accuracy' row 2"),
        (lambda d: d["matrices"]["accuracy"][1].__setitem__(0, None), "'matrices.accuracy' row 1 column 0"),
        (lambda d: d["matrices"]["accuracy"].append([0, 0, 0]), "'matrices.accuracy' has 5 rows"),
        (lambda d: d.__setitem__("complete", False), "'complete' is false"),
        (lambda d: d.__setitem__("schema", 2), "'schema'"),
        (lambda d: d["run"].pop("seed"), "'run.seed'"),
        (lambda d: d["run"].__setitem__("seed", "zero"), "'run.seed' must be int"),
        (lambda d: d.__setitem__("experiences", ["a"]), "'experiences'"),
        (lambda d: d["cost"].__setitem__("train_time_s", "fast"), "'cost.train_time_s'"),
    ],
)
def test_malformed_results_name_file_and_field(tmp_path, edit, field):
    d, f = _corrupt(tmp_path, edit)
    with pytest.raises(DataError) as info:
        load_run(d)
    assert str(f) in str(info.value) and field in str(info.value)


def test_nan_in_matrix_is_refused(tmp_path):
    d = _write(tmp_path)
    f = d / "results.json"
    f.write_text(f.read_text().replace("0.9", "NaN", 1))
    with pytest.raises(DataError, match="finite number"):
        load_run(d)


def test_not_json(tmp_path):
    d = _write(tmp_path)
    (d / "results.json").write_text("{not json")
    with pytest.raises(DataError, match=r"results.json: not valid JSON \(line 1"):
        load_run(d)


def test_reads_what_training_writes(tmp_path):
    """Contract check against the writer itself (clsharelora.training.results.ResultsStore)."""
    from clsharelora.training.results import ResultsStore

    rng = np.random.default_rng(np.random.SeedSequence().entropy)
    tasks = ["gsm8k", "humaneval", "mmlu"]
    store = ResultsStore(
        run={"name": "t", "stream": "demo", "adapter": "lora", "variant": "lora", "cl": "naive",
             "model": "tiny-llama", "seed": 5, "adapter_options": {"r": 8}, "cl_options": {}},
        tasks=tasks, experiences=["gsm8k", "code", "mmlu"])
    store.cost.update({"trainable_params": 123, "peak_memory_bytes": 5 * 2**20, "peak_memory_kind": "process_rss"})
    d = tmp_path / "run"
    d.mkdir()
    store.write(d)  # before any evaluation: empty matrices
    r0 = load_run(d)
    assert not r0.started and r0.status == "not started (no scores yet)"
    acc = rng.random((3, 3))
    for i in range(3):
        store.add_row([{"task": t, "accuracy": float(acc[i, j]), "nll": 1.0 + float(acc[i, j]), "n": 4}
                       for j, t in enumerate(tasks)])
    store.write(d)
    r = load_run(d)
    assert r.label == "lora" and r.seed == 5 and r.done == 2 and r.status == "incomplete (2/3 experiences)"
    assert r.memory_kind == "process_rss" and r.cost["trainable_params"] == 123
    np.testing.assert_array_equal(r.matrices["accuracy"], acc)
    stored = json.loads((d / "results.json").read_text())["metrics"]["accuracy"]
    for key in ("acc", "bwt", "fwt", "forgetting", "plasticity"):
        assert r.metrics("accuracy")[key] == pytest.approx(stored[key])


def test_a_run_scored_without_generation_has_nll_only_and_loads(tmp_path):
    """GSM8K/HumanEval with `generate: false` leave no accuracy matrix: the run is analysed on NLL alone."""
    d = _write(tmp_path, nll=(2.0 - np.asarray(A)).tolist())
    f = d / "results.json"
    data = json.loads(f.read_text())
    data["matrices"].pop("accuracy")
    f.write_text(json.dumps(data))
    run = load_run(d)
    assert run.scores == ["nll"] and run.done == len(run.tasks) and run.complete
    assert set(run.metrics("nll")) >= {"acc", "bwt", "forgetting"}
