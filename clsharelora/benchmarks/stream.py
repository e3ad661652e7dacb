"""Stream definitions: a small YAML file naming experiences in order, each with training data and a task.

```yaml
name: demo
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 64}          # + optional epochs / max_steps / max_length
    eval:  {task: gsm8k, n: 20, shots: 8, max_new_tokens: 256}   # + any option of that task's evaluator
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_yaml
from ..errors import ConfigError, did_you_mean
from ..pathsafe import check_name

TRAIN_KEYS = {"benchmark", "split", "n", "epochs", "max_steps", "max_length", "options"}
EXPERIENCE_KEYS = {"name", "train", "eval"}
STREAM_KEYS = {"name", "description", "experiences"}


@dataclass(frozen=True)
class TrainSpec:
    benchmark: str
    split: str = "train"
    n: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    max_length: int | None = None
    options: dict[str, Any] = field(default_factory=dict)   # extra loader kwargs (subjects=..., file=...)


@dataclass(frozen=True)
class ExperienceSpec:
    name: str
    train: TrainSpec
    task: str                      # the evaluated task (one column of R)
    eval_options: dict[str, Any]


@dataclass(frozen=True)
class Stream:
    name: str
    experiences: tuple[ExperienceSpec, ...]
    description: str = ""
    path: str = ""

    @property
    def tasks(self) -> list[str]:
        return [e.task for e in self.experiences]


def _unknown(keys, known, where: str) -> None:
    for key in keys:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, known)}; "
                              f"known: {', '.join(sorted(known))}")


def _positive(value, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def _check_evaluator_options(cls, options: dict, where: str) -> None:
    """Stream eval options must be keyword options of that task's evaluator (data/seed come from the run)."""
    import inspect

    known = [n for n, p in inspect.signature(cls.__init__).parameters.items()
             if p.kind is p.KEYWORD_ONLY and n not in ("data_root", "seed", "records", "shot_pool")]
    _unknown(options, known, where)


def parse_stream(data: dict[str, Any], source: str = "<stream>") -> Stream:
    from ..data import known_benchmarks
    from ..evaluation.tasks import evaluator_class, task_names

    _unknown(data, STREAM_KEYS, source)
    exps = data.get("experiences")
    if not isinstance(exps, list) or not exps:
        raise ConfigError(f"{source}: 'experiences' must be a non-empty list")
    out, names = [], set()
    for i, raw in enumerate(exps, 1):
        where = f"{source}: experience {i}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping")
        _unknown(raw, EXPERIENCE_KEYS, where)
        train = raw.get("train")
        if not isinstance(train, dict) or "benchmark" not in train:
            raise ConfigError(f"{where}: 'train' must be a mapping with a 'benchmark'")
        _unknown(train, TRAIN_KEYS, f"{where}.train")
        if train["benchmark"] not in known_benchmarks():
            raise ConfigError(f"{where}.train.benchmark {train['benchmark']!r} is unknown; "
                              f"known: {', '.join(known_benchmarks())}")
        evaluation = raw.get("eval")
        if not isinstance(evaluation, dict) or "task" not in evaluation:
            raise ConfigError(f"{where}: 'eval' must be a mapping with a 'task' (a task without an evaluator "
                              f"cannot be scored); known tasks: {', '.join(task_names())}")
        task = evaluation["task"]
        if task not in task_names():
            raise ConfigError(f"{where}.eval.task {task!r} has no evaluator; known: {', '.join(task_names())}")
        name = check_name(str(raw.get("name") or task), "experience name", where)
        if name in names:
            raise ConfigError(f"{where}: experience name {name!r} is used twice")
        names.add(name)
        spec = TrainSpec(
            benchmark=train["benchmark"], split=str(train.get("split", "train")),
            n=_positive(train.get("n"), f"{where}.train.n"),
            epochs=_positive(train.get("epochs"), f"{where}.train.epochs"),
            max_steps=_positive(train.get("max_steps"), f"{where}.train.max_steps"),
            max_length=_positive(train.get("max_length"), f"{where}.train.max_length"),
            options=dict(train.get("options") or {}),
        )
        options = {k: v for k, v in evaluation.items() if k != "task"}
        if "n" in options:
            _positive(options["n"], f"{where}.eval.n")
        out.append(ExperienceSpec(name=name, train=spec, task=task, eval_options=options))
    tasks = [e.task for e in out]
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"{source}: each experience must evaluate a different task (R has one column per task); "
                          f"got {tasks}")
    # last: naming an evaluator's options imports its class (and torch); every error above is found without
    for i, exp in enumerate(out, 1):
        if exp.eval_options:
            _check_evaluator_options(evaluator_class(exp.task), exp.eval_options, f"{source}: experience {i}.eval")
    name = check_name(str(data.get("name") or Path(source).stem), "stream name",
                      source if data.get("name") else f"from the file name {source}")
    return Stream(name=name, experiences=tuple(out),
                  description=str(data.get("description", "")), path=source)


def load_stream(path: str | Path) -> Stream:
    """Load and validate a stream file; a name (`demo`, `streams/demo.yaml`) that is not a file here resolves
    to the built-in stream shipped with the package (`paths.resolve_builtin`)."""
    from ..paths import builtin_names, resolve_builtin

    candidate = resolve_builtin(path, "streams")
    if not candidate.exists():
        known = builtin_names("streams")
        raise ConfigError(f"stream {path!r} not found; give a YAML path or one of: {', '.join(known)}")
    return parse_stream(load_yaml(candidate), str(candidate))
