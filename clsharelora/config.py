"""Run configuration: typed sections, YAML in/out, dotted overrides, validation with "did you mean".

A run is fully described by a `RunConfig`; the CLI builds one from defaults < --config file < flags <
--set overrides, validates it before any model is loaded, and writes the resolved result into the run dir.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, did_you_mean
from .textfiles import decode_utf8


@dataclass
class TrainConfig:
    """Optimisation of one experience (the stream may override epochs/steps/n per experience)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    global_batch: int = 4          # sequences per optimizer step, all processes together (the contract)
    batch_size: int = 4            # micro-batch per process (memory); accumulation derived: accumulation_steps
    epochs: int = 1
    max_steps: int | None = None   # optimizer steps per experience; caps epochs when set
    warmup_ratio: float = 0.03
    schedule: str = "cosine"       # any transformers.get_scheduler name: cosine | linear | constant_with_warmup
    max_grad_norm: float | None = 1.0
    max_length: int = 512          # tokens per training example (prompt + target + EOS); longer ones are dropped, never cut
    bf16: bool = False             # autocast to bfloat16 (CPU or CUDA)
    gradient_checkpointing: bool = False
    reset_optimizer: bool = True   # fresh optimizer + schedule per experience (standard sequential fine-tuning)
    checkpoint_every: int = 0      # optimizer steps between mid-experience checkpoints; 0 = only after experiences
    engine: str = "ddp"            # several processes: ddp (base replicated) | fsdp (base sharded, FSDP2); docs/scale.md


@dataclass
class EvalConfig:
    """Scoring after each experience; per-task options (n, shots, ...) come from the stream."""

    batch_size: int = 8
    n: int | None = None           # cap on items per task, on top of the stream's own n (quick runs)
    autocast: bool = False


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    stream: str = "streams/demo.yaml"
    adapter: dict[str, Any] = field(default_factory=lambda: {"name": "sharelora"})
    cl: dict[str, Any] = field(default_factory=lambda: {"name": "naive"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    data_root: str | None = None
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    dtype: str = "float32"         # base model weights: float32 | bfloat16 | float16
    load_in_4bit: bool = False     # QLoRA-style 4-bit base (needs bitsandbytes + CUDA)
    loggers: str = "text"          # comma list of Avalanche loggers: text, tensorboard, wandb
    name: str | None = None
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"train": TrainConfig, "eval": EvalConfig}
#: keys that were replaced: old key -> what to write instead
_REPLACED = {
    "train.grad_accum": "train.global_batch (sequences per optimizer step across all processes; accumulation "
                        "is derived from it): write train.global_batch: <batch_size x grad_accum x processes of "
                        "the old run>, e.g. 16 for batch_size 4 x grad_accum 4 on one process",
}
#: transformers' SchedulerType values (train.schedule), spelt out so that a config error needs no import of
#: transformers (and torch): seconds on a loaded machine. tests/test_config.py holds it equal to transformers'.
SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
             "warmup_stable_decay", "greedy")
SEED_MAX = 2 ** 32 - 1   # numpy's legacy seeding accepts [0, 2**32 - 1]
LOGGERS = ("text", "tensorboard", "wandb")
ENGINES = ("ddp", "fsdp")   # train.engine: how several processes share the model (training/engine.py)


def _check_type(where: str, value: Any, annotation: str) -> Any:
    """Coerce YAML scalars to the annotated type (int->float is fine); reject the rest with a clear message."""
    kinds = [a.strip() for a in annotation.replace("Optional[", "").rstrip("]").split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{where} must not be empty")
    if "bool" in kinds:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if "int" in kinds and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if "float" in kinds and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if "str" in kinds and isinstance(value, str):
        return value
    if any(k.startswith("dict") for k in kinds) and isinstance(value, dict):
        return value
    raise ConfigError(f"{where} must be {annotation}, got {value!r}")


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if f"{where}.{key}" in _REPLACED:
            raise ConfigError(f"{where}.{key} was removed; use {_REPLACED[f'{where}.{key}']}")
        if key not in fields:
            raise ConfigError(f"unknown key {where + '.' if where else ''}{key}{did_you_mean(key, fields)}; "
                              f"known: {', '.join(fields)}")
        path = f"{where}.{key}" if where else key
        if key in _SECTIONS and cls is RunConfig:
            kwargs[key] = _build(_SECTIONS[key], value, path)
        elif key in ("adapter", "cl") and cls is RunConfig:
            if isinstance(value, str):
                value = {"name": value}
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a strategy name or a mapping of its options")
            default_name = getattr(RunConfig(), key)["name"]  # `adapter: {r: 64}` keeps the default adapter
            kwargs[key] = {"name": default_name, **value}
        else:
            kwargs[key] = _check_type(path, value, str(fields[key].type))
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    config = _build(RunConfig, data, "")
    validate(config)
    return config


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error naming both lines
    (PyYAML keeps the later value silently: a config with two `lr:` would run with whichever came last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *base` may override, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice, on lines {first_line[key]} and {line}; keep one",
                            key_node.start_mark)
                    first_line[key] = line
                except TypeError:   # an unhashable key: PyYAML's own error follows
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a UTF-8 YAML mapping; syntax errors, undecodable bytes and duplicate keys name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.load(decode_utf8(path.read_bytes(), path, ConfigError), Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{at}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_value(raw: str) -> Any:
    """A command-line value as YAML reads it (64 -> int, 1e-4 -> float, [a, b] -> list); empty -> None;
    what YAML cannot read stays the string. Shared by --set and the options of a strategy spec."""
    try:
        return yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. adapter.r=64), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = parse_value(raw)
    parts = key.strip().split(".")
    if parts[0] == "lora":  # a friendly alias: lora.r=64 means the adapter's r
        parts[0] = "adapter"
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0] if n >= 1 else []


def accumulation_steps(train: TrainConfig, processes: int) -> int:
    """Micro-batches per optimizer step on each process: global_batch / (batch_size x processes).

    The global batch is the contract: the number of optimizer steps per experience and the learning-rate
    schedule depend on it and the data only, never on how many processes share the work.
    """
    g, b = train.global_batch, train.batch_size
    per_step = b * processes
    if g % per_step:
        allowed = f"a train.global_batch that is a multiple of {per_step}"
        if g % processes == 0:
            fits = ", ".join(map(str, _divisors(g // processes)))
            allowed += f", or a train.batch_size dividing {g // processes} ({fits})"
        raise ConfigError(f"train.global_batch={g} is not divisible by train.batch_size x processes = {b} x "
                          f"{processes} = {per_step}; allowed: {allowed}")
    return train.global_batch // per_step


def validate(config: RunConfig) -> None:
    """Impossible values, caught before anything heavy happens."""
    t = config.train
    checks = [
        (t.lr > 0, "train.lr must be > 0"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.global_batch >= 1, f"train.global_batch must be >= 1, got {t.global_batch}"),
        (t.batch_size < 1 or t.global_batch < 1 or t.global_batch % t.batch_size == 0,
         f"train.global_batch={t.global_batch} is not a multiple of train.batch_size={t.batch_size}; allowed: "
         f"a batch_size that divides global_batch ({', '.join(map(str, _divisors(t.global_batch)))})"),
        (t.epochs >= 1, "train.epochs must be >= 1"),
        (t.max_steps is None or t.max_steps >= 1, "train.max_steps must be >= 1 (or null)"),
        (0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (t.max_grad_norm is None or t.max_grad_norm > 0, "train.max_grad_norm must be > 0 (or null)"),
        (t.max_length >= 8, "train.max_length must be >= 8"),
        (t.checkpoint_every >= 0, "train.checkpoint_every must be >= 0"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (config.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (config.eval.n is None or config.eval.n >= 1, "eval.n must be >= 1 (or null)"),
        (config.dtype in ("float32", "bfloat16", "float16"), "dtype must be float32, bfloat16 or float16"),
        (not isinstance(config.seed, bool) and isinstance(config.seed, int) and 0 <= config.seed <= SEED_MAX,
         f"seed {config.seed!r} is out of range: allowed are integers 0 .. {SEED_MAX} (2**32 - 1)"),
        (not (config.load_in_4bit and config.dtype == "float32"),
         "load_in_4bit computes in bfloat16: set dtype: bfloat16 (or load_in_4bit: false)"),
    ]
    checks.append((t.engine in ENGINES, f"train.engine {t.engine!r} is unknown{did_you_mean(str(t.engine), ENGINES)}; "
                                        f"allowed: {' | '.join(ENGINES)}"))
    unknown_loggers = sorted(set(filter(None, config.loggers.split(","))) - set(LOGGERS))
    checks.append((not unknown_loggers, f"loggers: unknown {unknown_loggers}; known: {', '.join(LOGGERS)}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule {t.schedule!r} is unknown{did_you_mean(t.schedule, SCHEDULES)}; "
                          f"known: {', '.join(SCHEDULES)}")


def dump_yaml(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def switch_strategy(block, name: str, kind: str) -> dict:
    """Select strategy `name`, keeping the options of the config's block that it also understands
    (so `compare --strategies lora,sharelora` gives both the config's r, alpha and targets).

    The one rule for the rest: an option is dropped only when the block names its strategy explicitly and
    that strategy knows the option (`adapter: {name: sharelora, variant: share_a}` switched to lora drops
    `variant`); an option that neither strategy knows is an error with a "did you mean", as with --set."""
    from . import registry

    block = as_block(block)
    known = registry.option_defaults(name, kind)
    owner = registry.option_defaults(block["name"], kind) if block.get("name") else {}
    for key in block:
        if key != "name" and key not in known and key not in owner:
            where = f"{kind} strategy {block['name']!r}" if block.get("name") else f"{kind} strategy {name!r}"
            raise ConfigError(f"unknown option {kind}.{key} for {where}{did_you_mean(key, {**known, **owner})}; "
                              f"known options: {', '.join(sorted({**known, **owner}))}")
    return {"name": name, **{k: v for k, v in block.items() if k != "name" and k in known}}


def as_block(value) -> dict:
    """A strategy block as a dict: None -> {}, 'lora' -> {'name': 'lora'}."""
    if value is None:
        return {}
    return {"name": value} if isinstance(value, str) else dict(value)
