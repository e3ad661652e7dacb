"""Batched greedy generation for evaluation: length-sorted batches, left padding, KV cache, stop strings.

Each batch is decoded by a loop of our own over the model's forward (`decode_batch`): a row that hits EOS,
a stop string or max_new_tokens leaves the batch at once, so decode cost follows each row's own length.
Prompts that start with a shared context (the few-shot exemplars: one set for all of GSM8K, one per MMLU
subject) run that context once and reuse its KV cache: the batch is laid out as [context | left padding |
query], with the padding masked out and positions counted over real tokens only, so every row computes
exactly what it would alone.

Also the one context every evaluator runs the model in (`eval_context`): inference mode, eval mode (the
previous train/eval mode restored afterwards) and optional bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .. import hardware
from ..errors import ConfigError

#: bf16 autocast default for evaluation (set from a measurement on the project's CPU: see docs/evaluation.md).
AUTOCAST_DEFAULT = False


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_context(model, *, autocast: bool = False) -> Iterator[None]:
    """Run the block with `model.eval()`, `torch.inference_mode()` and (optionally) bf16 autocast on the
    model's device; the model's previous training flag is restored on exit, even after an error."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    autocast = hardware.bf16_for(device, autocast, "eval.autocast")  # fp32 on a CPU without native bf16
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            yield
    finally:
        model.train(was_training)


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ConfigError("the tokenizer has neither a pad nor an eos token; batched evaluation needs one to pad")


def length_sorted_batches(lengths: Sequence[int], batch_size: int, *, forward_cost: float | None = None,
                          ) -> list[list[int]]:
    """Indices grouped into batches of at most `batch_size` consecutive items of the longest-first order.

    `forward_cost` None: full batches (the fewest forwards; generation, whose every extra batch repeats the
    whole decode loop). A number: the cut that minimises the padded tokens computed plus `forward_cost` per
    forward (what one more forward costs, in tokens), found exactly by dynamic programming over the sorted
    order (an optimal batching of "rows x longest row" is always contiguous in it). A 50-token item is then
    no longer padded to a 577-token one's length when a forward is cheap next to that padding (a CPU:
    `forward_cost_tokens`). Either way the batch with the most padded tokens comes first, so an
    out-of-memory shows up on the first batch, not the last.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if forward_cost is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    sizes = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * len(order)   # best[j]: cost of batching the first j items
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(max(0, j - batch_size), j):  # last batch = order[i:j], padded to sizes[i]
            cost = best[i] + (j - i) * sizes[i] + forward_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], len(order)
    while j:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return sorted(batches, key=lambda b: (-len(b) * lengths[b[0]], b[0]))


def forward_cost_tokens(device: torch.device) -> float | None:
    """What one more teacher-forced forward costs on `device`, in padded tokens, for `length_sorted_batches`.

    CPU: one more forward of the 135M model costs about 14 tokens' compute (8 single rows of 64 tokens vs one
    batch of 8: 2.31 s vs 1.93 s at 1 thread; `make bench` part `batching`, docs/benchmarks.md section 9),
    so 16; on the demo stream that makes the MMLU/MMLU-Pro letter passes 1.5-1.6x faster than full batches
    of 8. Other devices: None (full batches, as before): a GPU forward's fixed cost was not measured (no GPU
    was lent to this project)."""
    return 16.0 if device.type == "cpu" else None


def eos_ids(model, tokenizer) -> set[int]:
    """Every token id that ends a sequence: the generation config's eos id(s) and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (excluding) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut]


class ContextGroup:
    """Prompts that share one tokenised context prefix (`prefix` may be empty: no shared context)."""

    def __init__(self, prefix: list[int], indices: list[int]):
        self.prefix, self.indices = prefix, indices


def group_by_context(
    tokenizer, prompts: Sequence[str], contexts: Sequence[str] | None,
) -> tuple[list[list[int]], list[ContextGroup]]:
    """Token ids of every prompt and the groups of prompts sharing a cached prefix.

    The cached prefix of a prompt is the longest run of its OWN leading tokens that its context's tokens
    also start with (a tokeniser may merge across the context/query boundary, e.g. "\n\n" + "Find"), and
    always leaves at least one query token; so caching never changes what the model sees. Prompts whose
    prefix is shared by no other prompt form one uncached group.
    """
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    if contexts is None:
        return encoded, [ContextGroup([], list(range(len(prompts))))]
    if len(contexts) != len(prompts):
        raise ConfigError(f"contexts has {len(contexts)} entries for {len(prompts)} prompts")
    context_ids: dict[str, list[int]] = {}
    members: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, context) in enumerate(zip(prompts, contexts)):
        k = 0
        if context and prompt.startswith(context):
            if context not in context_ids:
                context_ids[context] = tokenizer(context, add_special_tokens=True)["input_ids"]
            ids, own = context_ids[context], encoded[i]
            limit = min(len(ids), len(own) - 1)
            while k < limit and ids[k] == own[k]:
                k += 1
        members.setdefault(tuple(encoded[i][:k]), []).append(i)
    groups, plain = [], members.pop((), [])
    for prefix, idx in members.items():
        if len(idx) > 1:
            groups.append(ContextGroup(list(prefix), idx))
        else:  # a context used once saves nothing; batch it with the uncached prompts instead
            plain += idx
    if plain:
        groups.append(ContextGroup([], sorted(plain)))
    return encoded, groups


def prompt_token_limit(model, max_new_tokens: int) -> int | None:
    """How many prompt tokens fit when `max_new_tokens` must follow them: the model's position count
    (`max_position_embeddings`, or `n_positions` / `n_ctx`; a composite config's `text_config` first, as
    lm-eval's `resolve_max_length`) minus `max_new_tokens`, lm-eval HFLM `generate_until`'s max_ctx_len. None
    when the config names no limit. A ConfigError when nothing of a prompt would fit."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    positions = next((getattr(config, a) for a in ("n_positions", "max_position_embeddings", "n_ctx")
                      if isinstance(getattr(config, a, None), int)), None)
    if positions is None:
        return None
    if max_new_tokens >= positions:
        raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt: the model has "
                          f"{positions} positions (give max_new_tokens < {positions})")
    return positions - max_new_tokens


def cut_left(encoded: list[list[int]], groups: list[ContextGroup], limit: int | None) -> list[ContextGroup]:
    """Keep the last `limit` tokens of every longer prompt (lm-eval's left truncation: the end of the prompt,
    the question being asked, survives; the first exemplars go). A cut prompt no longer starts with its
    group's cached context, so it moves to the uncached group. `encoded` is changed in place."""
    if limit is None or all(len(ids) <= limit for ids in encoded):
        return groups
    moved, out = [], []
    for group in groups:
        long = {i for i in group.indices if len(encoded[i]) > limit}
        for i in long:
            encoded[i] = encoded[i][-limit:]
        keep = [i for i in group.indices if i not in long]
        if not group.prefix:
            moved += group.indices
        else:
            moved += sorted(long)
            if keep:
                out.append(ContextGroup(group.prefix, keep))
    if moved:
        out.append(ContextGroup([], sorted(moved)))
    return out


def cut_prompts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[bool]:
    """Which of `prompts` `generate` cuts from the left (longer than `prompt_token_limit`)."""
    limit = prompt_token_limit(model, max_new_tokens)
    if limit is None or not prompts:
        return [False] * len(prompts)
    return [len(ids) > limit for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


@torch.inference_mode()
def context_cache(model, prefix: list[int]):
    """The KV cache of one forward over `prefix` (batch 1), or None for an empty prefix."""
    if not prefix:
        return None
    ids = torch.tensor([prefix], dtype=torch.long, device=model_device(model))
    return model(input_ids=ids, use_cache=True).cache


def expand_cache(cache, batch: int):
    """A fresh copy of a batch-1 cache repeated `batch` times (the model appends to the copy, not the
    original, so the context is reused by every batch)."""
    if cache is None:
        return None
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(batch)
    return out


def layout(prefix: list[int], queries: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of rows [prefix | left padding | query], shape (B, len(prefix) + W)."""
    width = max(len(q) for q in queries)
    total = len(prefix) + width
    input_ids = torch.full((len(queries), total), pad, dtype=torch.long)
    mask = torch.zeros((len(queries), total), dtype=torch.long)
    if prefix:
        input_ids[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        mask[:, : len(prefix)] = 1
    for row, q in enumerate(queries):
        input_ids[row, total - len(q):] = torch.tensor(q, dtype=torch.long)
        mask[row, total - len(q):] = 1
    return input_ids.to(device), mask.to(device)


def _keeps_last_logits_only(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (as `model.generate` checks): the prefill then
    projects only the last position onto the vocabulary."""
    check = getattr(model, "_supports_logits_to_keep", None)
    return bool(check()) if callable(check) else False


def model_step(model, input_ids, attention_mask, position_ids, cache, *, last_only: bool):
    """THE one place generation calls the model (prefill and every decode step): next-token logits (fp32,
    shape (B, vocab)) and the updated cache. Anything that must wrap each model call of a decode loop (e.g.
    a lockstep all-ranks call under sharded weights) belongs here."""
    kwargs = {"logits_to_keep": 1} if last_only else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                use_cache=True, **kwargs)
    return out.logits[:, -1].to(dtype=torch.float32, copy=True), out.cache


def stop_hit(tokenizer, stop: Sequence[str], generated: list[int]) -> bool:
    """Whether a stop string appears in the generated tokens (never the prompt's).

    Only the last `window` tokens are decoded: a stop string of n characters spans at most n tokens (plus a
    few for byte-level pieces), so nothing is missed and the check stays O(1) per step.
    """
    stop = [s for s in stop if s]
    if not stop:
        return False
    window = 2 * max(len(s) for s in stop) + 4
    tail = tokenizer.decode(generated[-window:], skip_special_tokens=False)
    return any(s in tail for s in stop)


def decode_batch(
    model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, *, max_new_tokens: int,
    stop: Sequence[str], eos: set[int], temperature: float, generator: torch.Generator | None,
    last_only: bool,
) -> list[list[int]]:
    """New tokens of every row of a left-padded batch (ending at and excluding its first EOS).

    A greedy/sampled decode loop over the model's forward in which a row leaves the batch (its KV cache rows
    dropped with `batch_select_indices`) the step it hits EOS, a stop string or `max_new_tokens`: the
    remaining rows keep decoding on a smaller batch, so a batch costs the sum of its rows' lengths rather
    than batch size x its longest row. Positions count real tokens only (`model.generate`'s rule), so a row
    computes what it would alone. `cache` holds the KV of input_ids' first `cache.get_seq_length()`
    columns (the shared context) or is None.
    """
    device = input_ids.device
    mask = attention_mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    done_cols = cache.get_seq_length() if cache is not None else 0
    step_ids, step_pos = input_ids[:, done_cols:], positions[:, done_cols:]
    if cache is None:
        cache = DynamicCache(config=model.config)
    rows = list(range(input_ids.shape[0]))     # batch row -> original row, for the rows still decoding
    tokens: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new_tokens):
        logits, cache = model_step(model, step_ids, mask, step_pos, cache, last_only=last_only)
        if temperature:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            nxt = torch.argmax(logits, dim=-1)
        keep = []
        for b, tok in enumerate(nxt.tolist()):
            row = rows[b]
            if tok in eos:
                continue
            tokens[row].append(tok)
            if len(tokens[row]) < max_new_tokens and not stop_hit(tokenizer, stop, tokens[row]):
                keep.append(b)
        if not keep:
            break
        last_pos = step_pos[:, -1]
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            nxt, mask, last_pos = nxt[index], mask[index], last_pos[index]
            rows = [rows[b] for b in keep]
        step_ids = nxt[:, None]
        step_pos = (last_pos + 1)[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    return tokens


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    progress: str | None = None,
    contexts: Sequence[str] | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    skip_special_tokens: bool = False,
) -> list[str]:
    """Greedy completions of `prompts`, in input order, each cut at the first stop string (excluded).

    Length-sorted, left-padded batches decoded by `decode_batch` (KV cache; a finished row leaves the
    batch at once). The completion is decoded from the new tokens before the first EOS.
    `contexts[i]` (optional) is a prefix of prompts[i] shared with other prompts: it is run once and its
    KV cache reused (same outputs, less compute). `progress` is the tqdm label (None: no bar). The caller
    chooses eval mode / inference mode / autocast (see `eval_context`).
    `temperature` > 0 samples from the plain softmax at that temperature (no top-k/top-p) instead, from a
    generator seeded by `seed` per batch, the global RNG untouched (same prompts + batch_size + seed -> same
    samples). `skip_special_tokens` decodes the completion without special tokens, as lm-eval's HF backend does.
    A prompt longer than the model's positions leave room for (`prompt_token_limit`) is cut from the left to
    that many tokens, as lm-eval does; callers that report it count the cut prompts with the same limit.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if not prompts:
        return []
    device = model_device(model)
    encoded, groups = group_by_context(tokenizer, prompts, contexts)
    groups = cut_left(encoded, groups, prompt_token_limit(model, max_new_tokens))
    pad = pad_id(tokenizer)
    eos = eos_ids(model, tokenizer)
    last_only = _keeps_last_logits_only(model)
    out: list[str | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=progress, disable=progress is None, leave=False)
    for group in groups:
        cache = context_cache(model, group.prefix)
        p = len(group.prefix)
        queries = {i: encoded[i][p:] for i in group.indices}
        for batch in length_sorted_batches([len(queries[i]) for i in group.indices], batch_size):
            batch = [group.indices[j] for j in batch]
            input_ids, attention_mask = layout(group.prefix, [queries[i] for i in batch], pad, device)
            generator = None
            if temperature:
                generator = torch.Generator(device=device)
                generator.manual_seed(seed * 1_000_003 + batch[0])
            new = decode_batch(model, tokenizer, input_ids, attention_mask, expand_cache(cache, len(batch)),
                               max_new_tokens=max_new_tokens, stop=stop, eos=eos, temperature=float(temperature),
                               generator=generator, last_only=last_only)
            for row, i in enumerate(batch):
                out[i] = cut_at_stop(tokenizer.decode(new[row], skip_special_tokens=skip_special_tokens), stop)
            bar.update(len(batch))
    bar.close()
    return out  # type: ignore[return-value]
