"""Turn a Stream into an Avalanche benchmark: one AvalancheDataset of tokenised pairs per experience."""

from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset
from tqdm.auto import tqdm

from ..data import load_benchmark
from ..prompts import prompt_for, target_for
from .stream import ExperienceSpec, Stream
from .tokenized import PadCollator, TokenizedPairs, encode_pair


def experience_dataset(spec: ExperienceSpec, tokenizer, *, max_length: int, seed: int,
                       data_root=None) -> AvalancheDataset:
    """Load the experience's training records and tokenise them in the shared prompt format."""
    train = spec.train
    records = []
    for split in train.split.split("+"):  # "dev+val": several upstream splits form one training set
        records += load_benchmark(train.benchmark, split, root=data_root, **train.options)
    if train.n is not None and train.n < len(records):
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed * 7 + 1))
        records = [records[i] for i in sorted(order[:train.n].tolist())]
    limit = train.max_length or max_length
    examples = [encode_pair(tokenizer, prompt_for(r), target_for(r), limit)
                for r in tqdm(records, desc=f"tokenise {spec.name}", leave=False, disable=len(records) < 500)]
    data = TokenizedPairs(examples, [r.id for r in records])
    return AvalancheDataset([data], collate_fn=PadCollator(tokenizer.pad_token_id))


def make_benchmark(stream: Stream, tokenizer, *, max_length: int, seed: int, data_root=None):
    """CLScenario with a `train_stream` of len(stream.experiences) DatasetExperiences, in stream order."""
    datasets = [experience_dataset(e, tokenizer, max_length=max_length, seed=seed, data_root=data_root)
                for e in stream.experiences]
    return benchmark_from_datasets(train=datasets)
