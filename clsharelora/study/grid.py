"""A study file -> the grid of cells (strategy x seed x task order), each an ordinary run config.

```yaml
name: cpu-study
base: configs/demo.yaml            # the run config every cell starts from (model, stream, train, eval)
set: [eval.batch_size=8]           # optional --set style overrides for every cell
strategies:                        # compare's specs (strategy_specs.py), or a mapping with a label
  - lora                           # LoRA, naive training: the base config's cl: block is never inherited
  - lora+ewc(ewc_lambda=100)
  - sharelora:share_a
  - {label: lora-matched, adapter: {name: lora, match: share_a}}
seeds: [0, 1, 2]
orders: {permutations: 2, seed: 0}  # or {explicit: [[gsm8k, code, mmlu, mmlu_pro], [mmlu, gsm8k, ...]]}
                                    # or {rotations: all}: every cyclic rotation (each task once per position)
```

Orders name experiences of the base stream. `permutations: k` draws k distinct seeded permutations, the
first being the stream's own order. Each order becomes a stream file in the study directory, so a cell's
run identity (and the resume check) covers its order.
"""

from __future__ import annotations

import copy
import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import apply_override, from_dict, load_yaml, switch_strategy
from ..errors import ConfigError, did_you_mean
from ..strategy_specs import check_distinct, note_ignored_cl
from ..pathsafe import check_name

STUDY_KEYS = ("name", "description", "base", "set", "strategies", "seeds", "orders")


@dataclass(frozen=True)
class Strategy:
    label: str
    adapter: dict[str, Any]
    cl: dict[str, Any]


@dataclass(frozen=True)
class Cell:
    strategy: Strategy
    seed: int
    order: int                 # index into Study.orders

    @property
    def key(self) -> str:
        return f"{self.strategy.label}/seed{self.seed}-order{self.order}"


@dataclass(frozen=True)
class Study:
    name: str
    source: Path
    base: dict[str, Any]                 # the base run config (as a dict, overrides applied)
    stream: dict[str, Any]               # the base stream file's content
    strategies: tuple[Strategy, ...]
    seeds: tuple[int, ...]
    orders: tuple[tuple[str, ...], ...]  # experience names per order
    description: str = ""

    @property
    def cells(self) -> list[Cell]:
        """Seeds outermost, then orders, then strategies: an interrupted study has whole pairs done first."""
        return [Cell(s, seed, o) for seed in self.seeds for o in range(len(self.orders)) for s in self.strategies]

    def stream_for(self, order: int) -> dict[str, Any]:
        """The base stream with its experiences in order `order` (same name: cells stay one setting)."""
        by_name = {e.get("name") or e["eval"]["task"]: e for e in self.stream["experiences"]}
        data = copy.deepcopy(self.stream)
        data["experiences"] = [copy.deepcopy(by_name[n]) for n in self.orders[order]]
        data["description"] = f"{self.stream.get('description', '')} [order {order}: {' -> '.join(self.orders[order])}]"
        return data

    def config_for(self, cell: Cell, stream_path: Path, out: Path) -> dict[str, Any]:
        data = copy.deepcopy(self.base)
        data.update(adapter=dict(cell.strategy.adapter), cl=dict(cell.strategy.cl), seed=cell.seed,
                    stream=str(stream_path), out=str(out),
                    name=f"{label_dir(cell.strategy.label)}-seed{cell.seed}-order{cell.order}")
        return data


def label_dir(label: str) -> str:
    """A strategy label as one safe path component ("sharelora:share_a" -> "sharelora-share_a")."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", label).strip("-.") or "strategy"


def _strategy(entry: Any, base: dict[str, Any], where: str) -> Strategy:
    """A spec string (strategy_specs: the same run under any base config) or a mapping with a label; neither
    inherits the base config's `cl:` block (a mapping without `cl` trains naively, like a spec without +CL)."""
    from ..strategy_specs import blocks, parse

    if isinstance(entry, str):
        adapter, cl = blocks(parse(entry), base.get("adapter"))
        return Strategy(entry, adapter, cl)
    if isinstance(entry, dict):
        unknown = set(entry) - {"label", "adapter", "cl"}
        if unknown or "label" not in entry or "adapter" not in entry:
            raise ConfigError(f"{where}: a strategy mapping needs 'label' and 'adapter' (and optionally 'cl'), "
                              f"got keys {sorted(entry)}")
        # like a spec string, the mapping starts from the base config's options that its strategy knows
        # (r, alpha, targets, ...), so that e.g. {name: lora, match: share_a} matches the base's own rank
        adapter = entry["adapter"] if isinstance(entry["adapter"], dict) else {"name": entry["adapter"]}
        if "name" not in adapter:
            raise ConfigError(f"{where}: the strategy's 'adapter' mapping needs a 'name'")
        adapter = {**switch_strategy(base.get("adapter"), adapter["name"], "adapter"), **adapter}
        cl = entry.get("cl", "naive")
        cl = dict(cl) if isinstance(cl, dict) else {"name": cl}
        if "name" not in cl:
            raise ConfigError(f"{where}: the strategy's 'cl' mapping needs a 'name'")
        return Strategy(check_name(str(entry["label"]), "strategy label", where), dict(adapter), cl)
    raise ConfigError(f"{where}: a strategy is a spec string (lora, sharelora:share_a, lora+ewc(ewc_lambda=100)) or a "
                      "mapping")


def _orders(spec: Any, names: list[str], where: str) -> tuple[tuple[str, ...], ...]:
    if spec is None:
        return (tuple(names),)
    if not isinstance(spec, dict) or len(set(spec) & {"explicit", "permutations", "rotations"}) != 1:
        raise ConfigError(f"{where}: give one of {{explicit: [[...], ...]}}, {{permutations: K, seed: S}} or "
                          "{rotations: all}")
    if "rotations" in spec:
        # every cyclic rotation of the stream's order: each task once in each position (a Latin square),
        # so order effects are not confounded with where a task sits
        if spec["rotations"] != "all":
            raise ConfigError(f"{where}.rotations must be 'all' (every cyclic rotation), got {spec['rotations']!r}")
        return tuple(tuple(names[i:] + names[:i]) for i in range(len(names)))
    if "explicit" in spec:
        orders = spec["explicit"]
        if not isinstance(orders, list) or not orders:
            raise ConfigError(f"{where}.explicit must be a non-empty list of experience-name lists")
        out = []
        for i, order in enumerate(orders):
            if not isinstance(order, list) or sorted(map(str, order)) != sorted(names):
                raise ConfigError(f"{where}.explicit[{i}] = {order!r} is not a permutation of the stream's "
                                  f"experiences {names}")
            out.append(tuple(map(str, order)))
        if len(set(out)) != len(out):
            raise ConfigError(f"{where}.explicit lists the same order twice")
        return tuple(out)
    k, seed = spec["permutations"], spec.get("seed", 0)
    total = 1
    for i in range(2, len(names) + 1):
        total *= i
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= total:
        raise ConfigError(f"{where}.permutations must be an integer in 1..{total} (the number of orders of "
                          f"{len(names)} experiences), got {k!r}")
    rng = random.Random(seed)
    out = [tuple(names)]
    if total <= 5040:  # draw without replacement from all orders
        rest = [p for p in itertools.permutations(names) if p != tuple(names)]
        out += rng.sample(rest, k - 1)
    else:
        while len(out) < k:
            p = tuple(rng.sample(names, len(names)))
            if p not in out:
                out.append(p)
    return tuple(out)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; every cell's config is validated here, before anything runs."""
    from ..benchmarks.stream import load_stream, parse_stream
    from ..paths import resolve_builtin

    path = resolve_builtin(path, "configs")
    data = load_yaml(path)
    for key in data:
        if key not in STUDY_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(key, STUDY_KEYS)}; known: {', '.join(STUDY_KEYS)}")
    for key in ("base", "strategies", "seeds"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
    base_path = Path(data["base"])
    if not base_path.is_absolute() and not base_path.exists():
        base_path = path.parent / base_path
    base = load_yaml(base_path)
    overrides = data.get("set") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{path}: 'set' must be a list of KEY=VALUE strings")
    for assignment in overrides:
        apply_override(base, str(assignment))
    stream = load_stream(base.get("stream", "streams/demo.yaml"))
    stream_data = load_yaml(stream.path)
    names = [e.name for e in stream.experiences]
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                          for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    entries = data["strategies"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: 'strategies' must be a non-empty list")
    strategies = tuple(_strategy(e, base, f"{path}: strategies[{i}]") for i, e in enumerate(entries))
    labels = [s.label for s in strategies]
    if len(set(labels)) != len(labels) or len({label_dir(x) for x in labels}) != len(labels):
        raise ConfigError(f"{path}: strategy labels must differ (also as folder names), got {labels}")
    check_distinct([(s.label, s.adapter, s.cl) for s in strategies], f"{path}: strategies")
    note_ignored_cl(base.get("cl"), str(path))
    name = check_name(str(data.get("name") or path.stem), "study name",
                      str(path) if data.get("name") else f"from the file name {path}")
    study = Study(name=name, source=path, base=base, stream=stream_data,
                  strategies=strategies, seeds=tuple(seeds), orders=_orders(data.get("orders"), names, f"{path}: orders"),
                  description=str(data.get("description", "")))
    for order in range(len(study.orders)):
        parse_stream(study.stream_for(order), f"{path}: order {order}")
    for cell in study.cells:   # the whole plan: every cell's config (its seed included) before any cell runs
        from_dict(study.config_for(cell, Path(stream.path), Path("unused")))
    return study


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
