"""Turn a Stream into an Avalanche benchmark: one AvalancheDataset of tokenised pairs per experience.

Length policy (`fit_to_length`): an example is never cut. One whose prompt + target + EOS is longer than
the experience's max_length is dropped whole and counted; the start of a prompt (the question) is never
removed and a target is never shortened. Training prompts carry no few-shot block (`prompt_for(record)`
without shots), so there is no context side that could be shortened instead. The stream's `n` subset is
drawn first and over-long examples are dropped from it (n is an upper bound on what is trained). An
experience left with no example is a ConfigError naming it, its max_length and the length it would need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset
from tqdm.auto import tqdm

from ..data import load_benchmark
from ..errors import ConfigError
from ..prompts import prompt_for, target_for
from .stream import ExperienceSpec, Stream
from .tokenized import IGNORE_INDEX, PadCollator, TokenizedPairs, encode_example


@dataclass(frozen=True)
class TrainingData:
    """What one experience trains on after the length policy (results.json `training_data`, the log)."""

    experience: str
    max_length: int
    examples: int           # training records drawn for the experience
    kept: int               # examples that fit in max_length tokens
    dropped_too_long: int   # examples longer than max_length (prompt + target + EOS), dropped whole
    target_tokens: int      # labelled tokens (target + EOS) over the kept examples
    longest: int            # tokens of the longest drawn example (kept or not)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.experience}: {self.kept}/{self.examples} examples kept, {self.dropped_too_long} dropped "
                f"as longer than max_length={self.max_length} (longest {self.longest}), "
                f"{self.target_tokens} target tokens")


def length_counts(examples: list[dict[str, list[int]]], *, experience: str, max_length: int) -> TrainingData:
    """The counts of the length policy for `examples` (nothing dropped yet, nothing raised)."""
    fits = [x for x in examples if len(x["input_ids"]) <= max_length]
    return TrainingData(
        experience=experience, max_length=max_length, examples=len(examples), kept=len(fits),
        dropped_too_long=len(examples) - len(fits),
        target_tokens=sum(sum(1 for t in x["labels"] if t != IGNORE_INDEX) for x in fits),
        longest=max((len(x["input_ids"]) for x in examples), default=0))


def fit_to_length(examples: list[dict[str, list[int]]], ids: list[str], *, experience: str, max_length: int,
                  setting: str) -> tuple[list[dict[str, list[int]]], list[str], TrainingData]:
    """Drop the examples longer than max_length (never cut one); `setting` names the key that sets it."""
    stats = length_counts(examples, experience=experience, max_length=max_length)
    if not stats.kept or not stats.target_tokens:
        need = f"; the shortest needs {min(len(x['input_ids']) for x in examples)}" if examples else ""
        raise ConfigError(
            f"experience {experience!r}: none of its {len(examples)} training examples fits in max_length="
            f"{max_length} tokens (prompt + target + EOS{need}), so it would train nothing; raise {setting} "
            "(examples are never cut: cutting would drop the question or the answer)")
    keep = [i for i, x in enumerate(examples) if len(x["input_ids"]) <= max_length]
    return [examples[i] for i in keep], [ids[i] for i in keep], stats


def training_records(spec: ExperienceSpec, *, seed: int, data_root=None) -> list:
    """The experience's training records: its splits joined, then the seeded `n` subset."""
    train = spec.train
    records = []
    for split in train.split.split("+"):  # "dev+val": several upstream splits form one training set
        records += load_benchmark(train.benchmark, split, root=data_root, **train.options)
    if train.n is not None and train.n < len(records):
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed * 7 + 1))
        records = [records[i] for i in sorted(order[:train.n].tolist())]
    return records


def encode_records(spec: ExperienceSpec, records: list, tokenizer, *,
                   progress: bool = True) -> list[dict[str, list[int]]]:
    """Every record in the shared prompt format, encoded by the shared rule (nothing dropped)."""
    return [encode_example(tokenizer, prompt_for(r), target_for(r))
            for r in tqdm(records, desc=f"tokenise {spec.name}", leave=False,
                          disable=not progress or len(records) < 500)]


def experience_dataset(spec: ExperienceSpec, tokenizer, *, max_length: int, seed: int, data_root=None,
                       records: list | None = None) -> tuple[AvalancheDataset, TrainingData]:
    """The experience's training records (`records`, or `training_records`) in the shared prompt format,
    tokenised by the shared encoding rule, over-long ones dropped (`fit_to_length`); with the counts."""
    if records is None:
        records = training_records(spec, seed=seed, data_root=data_root)
    examples = encode_records(spec, records, tokenizer)
    setting = (f"the stream's train.max_length of experience {spec.name!r}" if spec.train.max_length
               else "train.max_length (--set train.max_length=N)")
    examples, ids, stats = fit_to_length(examples, [r.id for r in records], experience=spec.name,
                                         max_length=spec.train.max_length or max_length, setting=setting)
    data = TokenizedPairs(examples, ids)
    return AvalancheDataset([data], collate_fn=PadCollator(tokenizer.pad_token_id)), stats


def make_benchmark(stream: Stream, tokenizer, *, max_length: int, seed: int, data_root=None,
                   records: list[list] | None = None):
    """(CLScenario with a `train_stream` of len(stream.experiences) DatasetExperiences in stream order,
    the TrainingData counts of each experience). `records`: each experience's already loaded training records."""
    records = records or [None] * len(stream.experiences)
    built = [experience_dataset(e, tokenizer, max_length=max_length, seed=seed, data_root=data_root, records=r)
             for e, r in zip(stream.experiences, records)]
    return benchmark_from_datasets(train=[d for d, _ in built]), [s for _, s in built]
