"""Row 0 shared between the runs of a compare/study (training/shared_row0.py): read only when the task,
items, settings and the untrained model's function are the same; split between runs that score at once;
a dead scorer or a corrupt entry never leaves a run without its row; and in a real compare the second run's
row 0 equals what it would have scored itself."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from clsharelora.cli import main
from clsharelora.models import load_model, load_tokenizer
from clsharelora.training.results import read_items
from clsharelora.training.shared_row0 import SharedRow0, _flock, function_fingerprint
from test_compare_jobs import CONFIG     # the same tiny run config
from test_study_runner import STREAM   # the same tiny two-task stream


@dataclass
class Rec:
    id: str
    question: str


class FakeEvaluator:
    def __init__(self, task: str, n: int = 3, text: str = "q"):
        self.task = task
        self.records = [Rec(f"{task}-{i}", f"{text}{i}") for i in range(n)]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=3).eval(), load_tokenizer("tiny-llama")


def items_of(ev, value: float = 1.0):
    n = len(ev.records)
    return {"nll_sum": np.full(n, value), "nll_tokens": np.ones(n, dtype=np.int64), "correct": np.zeros(n)}


def shared(folder, name, tok, evaluators, options=None):
    return SharedRow0(folder, name, tok, evaluators, options or [{"n": len(e.records)} for e in evaluators],
                      model_name="tiny-llama", dtype="float32", autocast=False)


def test_a_second_run_reads_what_the_first_scored_and_says_so(tmp_path, tiny):
    model, tok = tiny
    evs = [FakeEvaluator("gsm8k"), FakeEvaluator("mmlu")]
    calls = []

    def compute(ev):
        calls.append(ev.task)
        return items_of(ev, 2.5)

    first, sources = shared(tmp_path, "lora", tok, evs).score(model, compute)
    assert calls == ["gsm8k", "mmlu"] and sources == {}
    again, sources = shared(tmp_path, "sharelora", tok, evs).score(model, lambda ev: pytest.fail("recomputed"))
    assert set(sources) == {"gsm8k", "mmlu"} and all(s["scored_by"] == "lora" for s in sources.values())
    for a, b in zip(first, again):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change", ["function", "items", "options", "tokenizer"])
def test_anything_that_changes_the_row_is_a_new_key(tmp_path, tiny, change):
    model, tok = tiny
    shared(tmp_path, "a", tok, [FakeEvaluator("mmlu")]).score(model, items_of)
    ev, options, other_tok = FakeEvaluator("mmlu"), None, tok
    if change == "items":
        ev = FakeEvaluator("mmlu", text="edited ")
    elif change == "options":
        options = [{"n": 3, "shots": 5}]
    elif change == "tokenizer":
        other_tok = load_tokenizer("tiny-llama")
        other_tok.add_tokens(["<extra_token_for_the_test>"])
    calls = []
    target = model
    if change == "function":   # a perturbation no larger than bf16 rounding of one weight
        target = load_model("tiny-llama", seed=3).eval()
        with torch.no_grad():
            target.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
        assert function_fingerprint(target, tok) != function_fingerprint(model, tok)
    _, sources = shared(tmp_path, "b", other_tok, [ev], options).score(target, lambda e: calls.append(1) or items_of(e))
    assert calls == [1] and sources == {}


def test_an_untouched_lora_and_sharelora_have_the_base_models_function(tiny):
    """The premise: a zero-delta adapter (B = 0) leaves every logit bit-identical, so their row 0 is one row."""
    from clsharelora import registry

    _, tok = tiny
    prints = set()
    for name, opts in (("lora", {"r": 4}), ("sharelora", {"variant": "share_a", "r": 4}),
                       ("sharelora", {"variant": "share_ab", "r": 2})):
        base = load_model("tiny-llama", seed=3).eval()
        prints.add(function_fingerprint(base, tok))
        torch.manual_seed(len(prints) + 11)   # a different random A per adapter
        prints.add(function_fingerprint(registry.create(name, "adapter", **opts).apply(base), tok))
    assert len(prints) == 1


def test_two_runs_at_once_split_the_tasks_and_get_the_same_row(tmp_path, tiny):
    model, tok = tiny
    evs = [FakeEvaluator(t) for t in ("gsm8k", "humaneval", "mmlu", "mmlu_pro")]
    calls: dict[str, list[str]] = {"a": [], "b": []}
    out = {}

    def go(name):
        def compute(ev):
            calls[name].append(ev.task)
            time.sleep(0.4)
            return items_of(ev, float(len(ev.task)))
        out[name] = shared(tmp_path, name, tok, evs).score(model, compute)[0]

    threads = [threading.Thread(target=go, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(calls["a"] + calls["b"]) == sorted(e.task for e in evs)   # each task scored once
    assert calls["a"] and calls["b"]                                        # by both runs
    for a, b in zip(out["a"], out["b"]):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_task_whose_scorer_died_is_scored_by_the_waiting_run(tmp_path, tiny):
    model, tok = tiny
    evs = [FakeEvaluator("gsm8k")]
    view = shared(tmp_path, "b", tok, evs)
    key = view.keys(model)[0]
    calls = []
    (tmp_path).mkdir(exist_ok=True)
    with _flock(tmp_path / f"{key}.lock", block=True):
        worker = threading.Thread(target=lambda: view.score(model, lambda ev: calls.append(1) or items_of(ev)))
        worker.start()
        time.sleep(0.5)
        assert not calls            # waiting for the holder
    worker.join(30)                 # the holder "dies" without writing: the waiter scores it
    assert calls == [1]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_entry_is_scored_again_and_replaced(tmp_path, tiny, damage):
    model, tok = tiny
    evs = [FakeEvaluator("mmlu")]
    shared(tmp_path, "a", tok, evs).score(model, items_of)
    entry = next(tmp_path.glob("*.npz"))
    entry.write_bytes(b"not a zip" if damage == "garbage" else entry.read_bytes()[: entry.stat().st_size // 2])
    calls = []
    got, sources = shared(tmp_path, "b", tok, evs).score(model, lambda ev: calls.append(1) or items_of(ev, 7.0))
    assert calls == [1] and sources == {} and got[0]["nll_sum"][0] == 7.0
    assert shared(tmp_path, "c", tok, evs).score(model, lambda ev: pytest.fail("recomputed"))[0][0]["nll_sum"][0] == 7.0


def test_in_a_compare_the_second_run_reads_row0_and_it_equals_its_own_scoring(tmp_path):
    (tmp_path / "stream.yaml").write_text(STREAM)
    (tmp_path / "c.yaml").write_text(CONFIG.format(stream=tmp_path / "stream.yaml"))
    assert main(["compare", "--config", str(tmp_path / "c.yaml"), "--strategies", "lora,sharelora:share_ab",
                 "--out", str(tmp_path / "cmp"), "--no-progress"]) == 0
    lora = json.loads((tmp_path / "cmp" / "lora" / "results.json").read_text())
    share = json.loads((tmp_path / "cmp" / "sharelora-share_ab" / "results.json").read_text())
    assert "shared_row0" not in lora
    assert {t: s["scored_by"] for t, s in share["shared_row0"].items()} == {"gsm8k": "lora", "mmlu": "lora"}
    # the same run alone (no shared folder) scores the same row 0, per item
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--strategy", "sharelora", "--variant", "share_ab",
                 "--out", str(tmp_path / "alone"), "--no-progress"]) == 0
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert "shared_row0" not in alone and alone["scores"][0] == share["scores"][0]
    mine, theirs = read_items(tmp_path / "alone", 0), read_items(tmp_path / "cmp" / "sharelora-share_ab", 0)
    for task in mine:
        for field in mine[task]:
            assert np.array_equal(mine[task][field], theirs[task][field]), (task, field)


def test_a_shared_row0_path_that_is_a_file_is_one_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "stream.yaml").write_text(STREAM)
    (tmp_path / "c.yaml").write_text(CONFIG.format(stream=tmp_path / "stream.yaml"))
    (tmp_path / "afile").write_text("x")
    code = main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                 "--shared-row0", str(tmp_path / "afile"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --shared-row0 {tmp_path / 'afile'}: exists and is not a directory")
    assert not (tmp_path / "run").exists()
