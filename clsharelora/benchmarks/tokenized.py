"""Tokenised (prompt, target) pairs for causal-LM training, and the collate that pads them.

Ids and label mask come from the shared encoding rule (`clsharelora.encoding.encode_pair`: prompt + target
tokenised as one text, split at the prompt boundary), so training learns exactly the target tokens that
scoring asks for; EOS is appended so the model also learns when to stop. Prompt tokens are -100.

Nothing here cuts an example: over-long ones are dropped and counted by `scenario.fit_to_length`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..encoding import encode_pair

IGNORE_INDEX = -100


def encode_example(tokenizer, prompt: str, target: str) -> dict[str, list[int]]:
    """input_ids/labels for one training example: target + EOS labelled, prompt tokens -100; never cut
    (the length policy is `scenario.fit_to_length`'s)."""
    ids, n_target = encode_pair(tokenizer, prompt, target)
    if tokenizer.eos_token_id is not None:
        ids, n_target = ids + [tokenizer.eos_token_id], n_target + 1
    n_prompt = len(ids) - n_target
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}


class TokenizedPairs(Dataset):
    """A list of encoded examples; `ids` keeps the source record ids for replay buffers and debugging."""

    def __init__(self, examples: list[dict[str, list[int]]], ids: list[str]):
        if len(examples) != len(ids):
            raise ValueError("examples and ids differ in length")
        self.examples, self.ids = examples, ids

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


@dataclass(frozen=True)
class PadCollator:
    """Right-pads a list of examples into input_ids / attention_mask / labels tensors."""

    pad_token_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, x in enumerate(batch):
            n = len(x["input_ids"])
            input_ids[row, :n] = torch.tensor(x["input_ids"])
            labels[row, :n] = torch.tensor(x["labels"])
            attention[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
