"""Seeded subsets: deterministic, seed-dependent, ordered, nested, and validated."""

from __future__ import annotations

import random

import pytest

from clsharelora.data import load_benchmark, seeded_subset
from clsharelora.errors import ConfigError, DataError
from clsharelora.paths import data_root


def test_subset_properties_on_fresh_inputs():
    rng = random.Random()
    items = [rng.random() for _ in range(rng.randint(50, 300))]
    n = rng.randint(1, len(items) - 1)
    seed = rng.randint(0, 10**6)
    a = seeded_subset(items, n, seed)
    assert a == seeded_subset(items, n, seed)  # deterministic
    assert len(a) == n and len(set(a)) == n
    pos = [items.index(x) for x in a]
    assert pos == sorted(pos)  # original order kept
    assert set(a) <= set(items)
    bigger = seeded_subset(items, min(len(items), n + 10), seed)
    assert set(a) <= set(bigger)  # nested in n for one seed
    others = {tuple(seeded_subset(items, n, s)) for s in range(seed + 1, seed + 6)}
    assert len(others | {tuple(a)}) > 1  # different seeds pick different items


def test_subset_is_not_the_prefix_and_covers_the_range():
    items = list(range(1000))
    a = seeded_subset(items, 100, 0)
    assert a != items[:100]
    assert max(a) > 800 and min(a) < 200  # spread over the whole list, not a window


def test_subset_edges():
    items = list(range(5))
    assert seeded_subset(items, 10, 3) == items
    assert seeded_subset(items, None, 3) == items and seeded_subset(items, None) is not items
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ConfigError, match="n"):
            seeded_subset(items, bad, 0)


def test_load_benchmark_subset():
    try:
        root = data_root()
    except DataError as exc:
        pytest.skip(str(exc))
    full = load_benchmark("gsm8k", "test", root=root)
    a = load_benchmark("gsm8k", "test", root=root, n=50, seed=7)
    assert a == load_benchmark("gsm8k", "test", root=root, n=50, seed=7)
    assert [r.id for r in a] != [r.id for r in load_benchmark("gsm8k", "test", root=root, n=50, seed=8)]
    ids = [r.id for r in full]
    assert all(r in full for r in a)
    idx = [ids.index(r.id) for r in a]
    assert idx == sorted(idx) and len(set(idx)) == 50
    assert load_benchmark("gsm8k", "test", root=root, n=10**6) == full
    with pytest.raises(ConfigError):
        load_benchmark("gsm8k", "test", root=root, n=0)
