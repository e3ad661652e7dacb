"""Tokenised (prompt, target) pairs for causal-LM training, and the collate that pads them.

Prompt and target are tokenised separately and concatenated (prompt ids + target ids + EOS) so the label
mask is exact: prompt tokens are -100, the model learns only the target and when to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


def encode_pair(tokenizer, prompt: str, target: str, max_length: int) -> dict[str, list[int]]:
    """input_ids/labels for one example; over-long examples lose the start of the prompt first."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    target_ids = target_ids[:max_length]
    keep = max_length - len(target_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep:] if keep > 0 else []
    return {"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}


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
