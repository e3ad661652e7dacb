"""Teacher-forced scoring: per-token NLL of reference answers, and log-probs of option letters.

Both run one forward per (length-sorted, left-padded) batch and project only the last positions onto the
vocabulary (`logits_to_keep`), so a 49k-token vocabulary costs B x (answer length) logits, not B x L.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..encoding import encode_pair
from ..errors import ConfigError
from .generation import (
    context_cache, expand_cache, forward_cost_tokens, group_by_context, layout, length_sorted_batches, model_device,
    pad_id,
)


def _last_logits(model, prefix: list[int], cache, queries: list[list[int]], keep: int, pad: int) -> torch.Tensor:
    """Float32 logits of the last `keep` positions of rows [prefix | left padding | query]: (B, keep, V).

    With a context `cache` (of `prefix`) only the query part is fed; position ids count real tokens only,
    so padding changes nothing."""
    input_ids, mask = layout(prefix, queries, pad, model_device(model))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, len(prefix):]
    kwargs = {} if cache is None else {"cache": expand_cache(cache, len(queries))}
    out = model(input_ids=input_ids[:, len(prefix):], attention_mask=mask, position_ids=positions,
                logits_to_keep=keep, use_cache=cache is not None, **kwargs)
    return out.logits[:, -keep:].float()


#: `forward_cost` default of the scoring functions: `forward_cost_tokens` of the model's device.
FOR_DEVICE = "for the device"


def _forward_cost(model, forward_cost):
    return forward_cost_tokens(model_device(model)) if forward_cost == FOR_DEVICE else forward_cost


@torch.inference_mode()
def target_nlls(
    model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8, progress: str | None = None,
    forward_cost: float | None | str = FOR_DEVICE,
) -> list[tuple[float, int]]:
    """Per pair: (summed NLL in nats of the target tokens given the prompt, number of target tokens).
    `forward_cost`: how batches are cut (`length_sorted_batches`)."""
    encoded = [encode_pair(tokenizer, p, t) for p, t in pairs]
    pad = pad_id(tokenizer)
    out: list[tuple[float, int] | None] = [None] * len(encoded)
    bar = tqdm(total=len(encoded), desc=progress, disable=progress is None, leave=False)
    cost = _forward_cost(model, forward_cost)
    for batch in length_sorted_batches([len(ids) for ids, _ in encoded], batch_size, forward_cost=cost):
        ids = [encoded[i][0] for i in batch]
        counts = [encoded[i][1] for i in batch]
        span = max(counts)
        if any(len(x) <= c for x, c in zip(ids, counts)):
            raise ConfigError("a prompt tokenised to zero tokens: the first target token has no context")
        logits = _last_logits(model, [], None, ids, span + 1, pad)[:, :-1]  # predicts the last `span` tokens
        labels = torch.full((len(batch), span), -100, dtype=torch.long, device=logits.device)
        for row, (x, c) in enumerate(zip(ids, counts)):
            labels[row, span - c:] = torch.tensor(x[-c:], dtype=torch.long)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                              reduction="none").view(len(batch), span)
        for row, i in enumerate(batch):
            out[i] = (float(nll[row].sum()), counts[row])
        bar.update(len(batch))
    bar.close()
    return out  # type: ignore[return-value]


def nll_items(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8,
              progress: str | None = None) -> dict[str, np.ndarray]:
    """`target_nlls` as per-item result fields (clsharelora.evaluation.items): {"nll_sum", "nll_tokens"};
    empty arrays for no pairs (an empty shard)."""
    parts = target_nlls(model, tokenizer, pairs, batch_size=batch_size, progress=progress) if pairs else []
    return {"nll_sum": np.array([s for s, _ in parts], dtype=float),
            "nll_tokens": np.array([c for _, c in parts], dtype=np.int64)}


def answer_nll(
    model, tokenizer, pairs: list[tuple[str, str]], *, batch_size: int = 8, progress: str | None = None,
) -> float:
    """Mean per-token NLL (nats) of each target given its prompt, token-weighted over all pairs."""
    if not pairs:
        raise ConfigError("answer_nll needs at least one (prompt, target) pair")
    parts = target_nlls(model, tokenizer, pairs, batch_size=batch_size, progress=progress)
    return sum(s for s, _ in parts) / sum(c for _, c in parts)


def letter_token_ids(tokenizer, prompt: str, letters: Sequence[str]) -> list[int]:
    """The single token each letter continuation (" A", ...) becomes right after `prompt`, by the shared
    encoding rule (`clsharelora.encoding.encode_pair`): the letter's token in the joint tokenisation.

    One forward scores every letter only when, for each letter, prompt + letter tokenises as the prompt's
    own tokens plus exactly one token (no multi-token letter, no token straddling the boundary); anything
    else is a ConfigError. Resolved on the prompt's last line (where the boundary lies; the whole prompt
    when that line is blank), so prompts ending in the same line share the letter ids.
    """
    tail = _letter_context(prompt)
    base = tokenizer(tail, add_special_tokens=True)["input_ids"]
    ids = []
    for letter in letters:
        full, count = encode_pair(tokenizer, tail, letter)
        if count != 1 or full[:-1] != base:
            raise ConfigError(
                f"option letter {letter!r} after {tail[-30:]!r} is not a single token for this tokenizer; "
                "letter scoring needs one token per letter"
            )
        ids.append(full[-1])
    return ids


def _letter_context(prompt: str) -> str:
    tail = prompt[prompt.rfind("\n") + 1:]
    return tail if tail.strip() else prompt


@torch.inference_mode()
def letter_logprobs(
    model, tokenizer, prompts: Sequence[str], letters: Sequence[str], *, batch_size: int = 8,
    progress: str | None = None, contexts: Sequence[str] | None = None,
    forward_cost: float | None | str = FOR_DEVICE,
) -> torch.Tensor:
    """(N, len(letters)) log-probabilities, under the full-vocabulary softmax at the position after each
    prompt, of each option letter token: one forward per question, the lm-eval loglikelihood of " A".." J".

    `contexts[i]` (optional): a prefix of prompts[i] shared with others (the few-shot block), run once per
    distinct context and reused from its KV cache. `forward_cost`: how batches are cut (`length_sorted_batches`)."""
    if not letters:
        raise ConfigError("letter_logprobs needs at least one letter")
    encoded, groups = group_by_context(tokenizer, prompts, contexts)
    cache_ids: dict[str, list[int]] = {}
    letter_ids = []
    for prompt in prompts:
        tail = _letter_context(prompt)
        if tail not in cache_ids:
            cache_ids[tail] = letter_token_ids(tokenizer, prompt, letters)
        letter_ids.append(cache_ids[tail])
    pad = pad_id(tokenizer)
    out = torch.empty((len(prompts), len(letters)), dtype=torch.float32)
    cost = _forward_cost(model, forward_cost)
    bar = tqdm(total=len(prompts), desc=progress, disable=progress is None, leave=False)
    for group in groups:
        cache = context_cache(model, group.prefix)
        p = len(group.prefix)
        for batch in length_sorted_batches([len(encoded[i]) - p for i in group.indices], batch_size, forward_cost=cost):
            batch = [group.indices[j] for j in batch]
            logits = _last_logits(model, group.prefix, cache, [encoded[i][p:] for i in batch], 1, pad)
            logprobs = logits[:, -1].log_softmax(-1)
            index = torch.tensor([letter_ids[i] for i in batch], dtype=torch.long, device=logprobs.device)
            out[batch] = logprobs.gather(1, index).detach().cpu()
            bar.update(len(batch))
    bar.close()
    return out
