"""Seeded subsets: the same (n, seed) always picks the same items, kept in their original order.

The pick is the first n indices of a seeded permutation, so subsets of one seed are nested
(n=100 is contained in n=200): growing a run's budget keeps the items it already used.
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from ..errors import ConfigError

T = TypeVar("T")


def seeded_subset(items: Sequence[T], n: int | None, seed: int = 0) -> list[T]:
    """n items of `items` chosen by `seed`, in original order; n=None or n >= len -> all (a fresh list)."""
    if n is None:
        return list(items)
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigError(f"n: subset size must be an integer or None, got {n!r}")
    if n <= 0:
        raise ConfigError(f"n: subset size must be positive, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: must be an integer, got {seed!r}")
    if n >= len(items):
        return list(items)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in sorted(order[:n])]
