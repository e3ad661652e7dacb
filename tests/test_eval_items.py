"""Per-item results: standard errors against closed forms, the item split over ranks, every evaluator's
score rebuilt from its items (and from items scored in shards), the items file round trip, and item-sharded
scoring on 2 gloo processes equal to one process."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
import torch

from clsharelora.data import load_benchmark
from clsharelora.evaluation.gsm8k import GSM8KEvaluator
from clsharelora.evaluation.humaneval import HumanEvalEvaluator
from clsharelora.evaluation.items import binomial_se, mean_se, merge_shards, ratio_se, shard_indices
from clsharelora.evaluation.multiple_choice import MMLUEvaluator, MMLUProEvaluator
from clsharelora.models import load_model, load_tokenizer
from clsharelora.training.results import read_items, write_items


# ------------------------------------------------------------------------------------- standard errors

def test_mean_se_of_binary_items_is_the_binomial_se():
    rng = np.random.default_rng(int(torch.randint(0, 10_000, (1,))))
    for n in (1, 7, 50):
        x = (rng.random(n) < rng.random()).astype(float)
        assert mean_se(x) == pytest.approx(binomial_se(x.mean(), n), abs=1e-15)
        assert mean_se(x) == pytest.approx(math.sqrt(x.mean() * (1 - x.mean()) / n), abs=1e-15)


def test_ratio_se_matches_the_delta_method_and_the_spread_of_simulated_ratios():
    rng = np.random.default_rng(7)
    counts = rng.integers(5, 60, size=40).astype(float)
    rate = 1.7
    sims, ses = [], []
    for _ in range(3000):
        sums = counts * rate + rng.normal(0, 2.0, size=counts.size) * np.sqrt(counts)
        sims.append(sums.sum() / counts.sum())
        ses.append(ratio_se(sums, counts))
    # the SE estimates the spread of the ratio over repeated draws of the items' NLLs
    assert np.mean(ses) == pytest.approx(np.std(sims), rel=0.05)
    assert ratio_se([3.0], [2.0]) == 0.0


# ---------------------------------------------------------------------------------------------- sharding

def test_shard_indices_cover_every_item_once_and_balance_the_cost():
    rng = random.Random(int(torch.randint(0, 10_000, (1,))))
    for world in (1, 2, 3, 8):
        costs = [rng.randint(1, 500) for _ in range(rng.randint(0, 60))]
        shards = shard_indices(costs, world)
        assert len(shards) == world
        assert sorted(i for s in shards for i in s) == list(range(len(costs)))
        assert all(s == sorted(s) for s in shards)
        loads = [sum(costs[i] for i in s) for s in shards]
        if costs:  # greedy longest-first: no rank exceeds another by more than the largest item
            assert max(loads) - min(loads) <= max(costs)
        assert shard_indices(costs, world) == shards  # every rank computes the same split


def test_merge_shards_restores_item_order_and_rejects_gaps_or_overlaps():
    parts = [([0, 3], {"nll_sum": np.array([1.0, 4.0]), "nll_tokens": np.array([1, 4])}),
             ([], {"nll_sum": np.zeros(0), "nll_tokens": np.zeros(0, dtype=int)}),
             ([1, 2], {"nll_sum": np.array([2.0, 3.0]), "nll_tokens": np.array([2, 3])})]
    merged = merge_shards(parts, 4)
    assert merged["nll_sum"].tolist() == [1.0, 2.0, 3.0, 4.0] and merged["nll_tokens"].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="exactly once"):
        merge_shards(parts[:1], 4)
    with pytest.raises(ValueError, match="exactly once"):
        merge_shards(parts + [([0], {"nll_sum": np.array([9.0]), "nll_tokens": np.array([9])})], 4)


# ------------------------------------------------------------------------------------------- evaluators

@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=3), load_tokenizer("tiny-llama")


def _evaluators():
    seed = int(torch.randint(0, 1000, (1,)))
    return [
        GSM8KEvaluator(n=5, seed=seed, shots=1, max_new_tokens=8, batch_size=2),
        GSM8KEvaluator(n=5, seed=seed, shots=1, generate=False, batch_size=2),
        HumanEvalEvaluator(n=3, seed=seed, max_new_tokens=8, batch_size=2, timeout=5.0),
        MMLUEvaluator(n=7, seed=seed, shots=1, batch_size=3),
        MMLUProEvaluator(n=6, seed=seed, shots=0, batch_size=4),
    ]


def test_every_score_is_rebuilt_from_its_items_and_shards_give_the_same_items(tiny):
    model, tok = tiny
    for ev in _evaluators():
        n = len(ev.records)
        score = ev.evaluate(model, tok, progress=False)
        items = score.items
        assert set(items) >= {"nll_sum", "nll_tokens"} and all(v.shape == (n,) for v in items.values())
        assert score.nll == pytest.approx(items["nll_sum"].sum() / items["nll_tokens"].sum(), rel=1e-12)
        assert score.extra["nll_se"] == pytest.approx(ratio_se(items["nll_sum"], items["nll_tokens"]))
        if getattr(ev, "with_generation", True):
            assert score.accuracy == pytest.approx(items["correct"].mean())
            assert score.extra["accuracy_se"] == pytest.approx(binomial_se(score.accuracy, n))
        else:
            assert score.accuracy is None and "correct" not in items and "accuracy_se" not in score.extra
        # the same items scored as two ranks would score them, merged back
        shards = shard_indices(ev.item_costs(), 2)
        merged = merge_shards([(s, ev.score_items(model, tok, s, progress=False)) for s in shards], n)
        assert set(merged) == set(items)
        for key in items:
            np.testing.assert_allclose(merged[key], items[key], rtol=1e-5, atol=1e-6, err_msg=f"{ev.task} {key}")
        again = ev.summarize(merged)
        assert again.accuracy == score.accuracy and again.nll == pytest.approx(score.nll, rel=1e-5)


def test_items_file_round_trip(tmp_path):
    items = {"mmlu": {"correct": np.array([1.0, 0.0]), "nll_sum": np.array([0.5, 2.5]),
                      "nll_tokens": np.array([1, 1])},
             "gsm8k": {"nll_sum": np.array([30.0]), "nll_tokens": np.array([12])}}
    write_items(tmp_path, 2, items, {"mmlu": ["m/1", "m/2"], "gsm8k": ["g7"]})
    got = read_items(tmp_path, 2)
    assert sorted(got) == ["gsm8k", "mmlu"]
    assert got["mmlu"]["id"].tolist() == ["m/1", "m/2"] and got["gsm8k"]["nll_tokens"].tolist() == [12]
    np.testing.assert_array_equal(got["mmlu"]["correct"], items["mmlu"]["correct"])
    assert read_items(tmp_path, 3) == {}


# ------------------------------------------------------------------------------- 2 gloo processes

def _sharded_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from clsharelora.training.distributed import Dist
    from clsharelora.training.results import ResultsStore
    from clsharelora.training.scoring import ScoringPlugin

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        evaluators = [GSM8KEvaluator(n=5, seed=11, shots=1, max_new_tokens=8, batch_size=2),
                      MMLUEvaluator(n=9, seed=11, shots=1, batch_size=3)]
        store = ResultsStore({}, [e.task for e in evaluators], [e.task for e in evaluators])
        plugin = ScoringPlugin(evaluators, load_tokenizer("tiny-llama"), store, out, adapter=None,
                               dist=Dist(rank=rank, world_size=world), progress=False)
        row, items = plugin.score(load_model("tiny-llama", seed=3))
        if rank == 0:
            np.save(os.path.join(out, f"world{world}.npy"), {"row": row, "items": items}, allow_pickle=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2])
def test_item_sharded_scoring_on_two_processes_equals_one_process(tmp_path, world):
    import socket

    import torch.multiprocessing as mp

    results = {}
    for w in (1, world):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_sharded_worker, args=(w, port, str(tmp_path)), nprocs=w, join=True)
        results[w] = np.load(tmp_path / f"world{w}.npy", allow_pickle=True).item()
    one, two = results[1], results[world]
    for a, b in zip(one["row"], two["row"]):
        assert a["task"] == b["task"] and a["n"] == b["n"]
        assert a["accuracy"] == b["accuracy"]
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-5)
    for task, fields in one["items"].items():
        for key, value in fields.items():
            np.testing.assert_allclose(two["items"][task][key], value, rtol=1e-5, atol=1e-6, err_msg=f"{task} {key}")
