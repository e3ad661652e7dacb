"""Batched generation must equal unbatched greedy decoding, and stop strings must cut and end it."""

from __future__ import annotations

import contextlib

import pytest
import torch

from clsharelora.errors import ConfigError
from clsharelora.evaluation.generation import (
    cut_at_stop, stop_hit, eos_ids, eval_context, generate, length_sorted_batches,
)
from clsharelora.models import load_model, load_tokenizer

PROMPTS = [
    "Question: What is two plus two?\nAnswer:",
    "Hi",
    "The quick brown fox jumps over the lazy dog because it was very, very tired of running around.",
    "def f(x):\n    return",
    "Once upon a time",
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=1).eval(), load_tokenizer("tiny-llama")


def reference_completion(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Unbatched, unpadded greedy decoding of one prompt: the ground truth batching must reproduce."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    eos = eos_ids(model, tokenizer)
    cut = next((i for i, t in enumerate(new) if t in eos), len(new))
    return tokenizer.decode(new[:cut], skip_special_tokens=False)


def manual_greedy(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Greedy decoding with a full forward per step (no KV cache, no generate())."""
    ids = tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(tokenizer(prompt)["input_ids"]):]


def manual_greedy_ids(model, ids: list[int], steps: int) -> list[int]:
    """Greedy tokens after `ids` from a full forward per step (no cache, no padding, no generate())."""
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(ids) - steps:]


def test_batched_equals_unbatched_greedy(tiny):
    model, tok = tiny
    got = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3)
    want = [reference_completion(model, tok, p, 12) for p in PROMPTS]
    assert got == want
    assert any(len(w) > 0 for w in want)
    # batch size must not matter either (different padding, different sort groups)
    assert generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=1) == want
    assert tok.padding_side == "right"  # restored


def test_kv_cached_generation_equals_full_forward_greedy(tiny):
    model, tok = tiny
    prompt = PROMPTS[2]
    tokens = manual_greedy(model, tok, prompt, 10)
    if eos_ids(model, tok) & set(tokens):
        pytest.skip("random model emitted EOS; comparison needs a full run")
    assert generate(model, tok, [prompt], max_new_tokens=10) == [tok.decode(tokens, skip_special_tokens=False)]


def test_stop_string_truncates_and_ends_generation_early(tiny):
    model, tok = tiny
    prompt = PROMPTS[0]
    full = generate(model, tok, [prompt], max_new_tokens=30)[0]
    assert len(full) > 12
    stop = full[6:9]
    cut = full.find(stop)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        got = generate(model, tok, [prompt], max_new_tokens=30, stop=[stop, "zzzz-never"])
    finally:
        handle.remove()
    assert got == [full[:cut]]
    assert stop not in got[0]
    assert len(calls) < 30  # stopped well before max_new_tokens


def test_results_come_back_in_input_order(tiny):
    model, tok = tiny
    each = [generate(model, tok, [p], max_new_tokens=5)[0] for p in PROMPTS]
    assert generate(model, tok, PROMPTS[::-1], max_new_tokens=5, batch_size=2) == each[::-1]
    assert generate(model, tok, [], max_new_tokens=5) == []


def test_cut_at_stop_uses_the_earliest_stop():
    assert cut_at_stop("a b\n\nQuestion: c", ["Question:", "\n\n"]) == "a b"
    assert cut_at_stop("no stop here", ["Question:"]) == "no stop here"
    assert cut_at_stop("x</s>y<|im_end|>", ["<|im_end|>", "</s>"]) == "x"


def test_stop_check_sees_only_generated_tokens(tiny):
    _, tok = tiny
    assert stop_hit(tok, ["Question:"], tok(" two Question:", add_special_tokens=False)["input_ids"])
    assert not stop_hit(tok, ["Question:"], tok(" two three four", add_special_tokens=False)["input_ids"])
    long_tail = tok(" Question:" + " word" * 200, add_special_tokens=False)["input_ids"]
    assert not stop_hit(tok, ["Question:"], long_tail)  # only the last few tokens are looked at
    assert not stop_hit(tok, [], long_tail) and not stop_hit(tok, [""], long_tail)


def test_length_sorted_batches_cover_every_index_once():
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert all(len(b) <= 3 for b in batches)
    with pytest.raises(ConfigError):
        length_sorted_batches(lengths, 0)


def set_partitions(items: list[int], most: int):
    """Every partition of `items` into blocks of at most `most` (brute force, small n)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest, most):
        yield [[first], *part]
        for k, block in enumerate(part):
            if len(block) < most:
                yield [*part[:k], [first, *block], *part[k + 1:]]


@pytest.mark.parametrize("trial", range(6))
def test_padding_aware_batches_are_the_cheapest_of_all_partitions(trial):
    """Against brute force over every partition (not only contiguous ones): padded tokens + forward_cost
    per forward is minimal; batch sizes are respected; the batch with most padded tokens comes first."""
    import random

    rnd = random.Random(trial * 7919 + random.randrange(10**6))
    lengths = [rnd.choice([rnd.randint(1, 20), rnd.randint(50, 600)]) for _ in range(rnd.randint(1, 7))]
    batch_size, cost = rnd.randint(1, 4), rnd.choice([0.0, 16.0, 150.0])

    def total(batches):
        return sum(len(b) * max(lengths[i] for i in b) + cost for b in batches)

    got = length_sorted_batches(lengths, batch_size, forward_cost=cost)
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in got)
    best = min(total(p) for p in set_partitions(list(range(len(lengths))), batch_size))
    assert total(got) == pytest.approx(best), (lengths, batch_size, cost, got)
    padded = [len(b) * max(lengths[i] for i in b) for b in got]
    assert padded[0] == max(padded)


def test_cheap_forwards_stop_padding_short_items_to_a_long_one():
    """The demo's MMLU-Pro lengths: full batches of 8 pad eight items to 577 tokens; at a CPU's forward
    cost the long items go alone and the total computed tokens fall by over a third."""
    lengths = [84, 109, 136, 137, 142, 152, 165, 183, 183, 191, 217, 223, 235, 254, 347, 577]
    full = length_sorted_batches(lengths, 8)
    cut = length_sorted_batches(lengths, 8, forward_cost=16.0)
    tokens = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert tokens(full) == 8 * 577 + 8 * 183
    assert tokens(cut) < 0.65 * tokens(full)
    assert [lengths[i] for i in cut[0]] == [577] or [577] in [[lengths[i] for i in b] for b in cut]


def test_eval_context_restores_training_mode(tiny):
    model, _ = tiny
    model.train()
    with eval_context(model):
        assert not model.training and torch.is_inference_mode_enabled()
    assert model.training
    with pytest.raises(RuntimeError):
        with eval_context(model, autocast=True):
            raise RuntimeError("boom")
    assert model.training
    model.eval()
    with eval_context(model):
        pass
    assert not model.training


def test_bad_max_new_tokens(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, tok, ["x"], max_new_tokens=0)


def test_shared_context_cache_gives_the_same_completions(tiny):
    model, tok = tiny
    context = "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer: 4\n\n"
    queries = ["Question: 3+3?\nAnswer:", "Question: what is seven times eight?\nAnswer:", "Question: 9?\nAnswer:"]
    prompts = [context + q for q in queries] + ["unrelated prompt"]
    contexts = [context] * 3 + [""]
    want = [reference_completion(model, tok, p, 8) for p in prompts]
    assert generate(model, tok, prompts, max_new_tokens=8, batch_size=2, contexts=contexts) == want


def test_group_by_context_keeps_the_prompts_own_tokens(tiny):
    from clsharelora.evaluation.generation import group_by_context

    _, tok = tiny
    context = "Answer: B\n\n"  # "\n\n" tokenises differently at the end of a string than before "Find"
    prompts = [context + "Find x.\nAnswer:", context + "Find y.\nAnswer:", "alone", context + "Once\nAnswer:"]
    encoded, groups = group_by_context(tok, prompts, [context, context, "", "Answer: X\n\n"])
    assert sorted(i for g in groups for i in g.indices) == [0, 1, 2, 3]
    shared = [g for g in groups if g.prefix]
    assert len(shared) == 1 and shared[0].indices == [0, 1]
    for i in shared[0].indices:
        assert encoded[i][: len(shared[0].prefix)] == shared[0].prefix
        assert len(encoded[i]) > len(shared[0].prefix)
    with pytest.raises(ConfigError, match="contexts"):
        group_by_context(tok, prompts, [context])


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny):
    model, tok = tiny
    state = torch.random.get_rng_state()
    a = generate(model, tok, PROMPTS[:3], max_new_tokens=8, temperature=1.5, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a == generate(model, tok, PROMPTS[:3], max_new_tokens=8, temperature=1.5, seed=7)
    assert a != generate(model, tok, PROMPTS[:3], max_new_tokens=8, temperature=1.5, seed=8)
    greedy = [reference_completion(model, tok, p, 8) for p in PROMPTS[:3]]
    assert generate(model, tok, PROMPTS[:3], max_new_tokens=8, temperature=0.0, seed=8) == greedy
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, tok, ["x"], max_new_tokens=2, temperature=-1)


# ------------------------------------------------------------------ rows leaving the batch (decode_batch)
def random_prompts(tokenizer, rng, n: int, lo: int = 1, hi: int = 40) -> list[str]:
    """Fresh prompts of mixed lengths: decoded random token ids (no special tokens)."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(min(tokenizer.vocab_size, 5000)) if i not in special]
    return [tokenizer.decode([rng.choice(ids) for _ in range(rng.randint(lo, hi))]) for _ in range(n)]


def one_at_a_time(model, tokenizer, prompts, max_new_tokens, stop=()) -> list[str]:
    """The independent reference: `model.generate` greedy on each prompt alone, no padding, no shared cache,
    decoded up to the first EOS and cut at the first stop string."""
    return [cut_at_stop(reference_completion(model, tokenizer, p, max_new_tokens), stop) for p in prompts]


@contextlib.contextmanager
def early_eos(model, tokenizer, prompts, steps: int):
    """An extra EOS id on the model's generation config, chosen so that greedy decoding hits it at different
    steps in different rows and never in some: of the tokens the prompts' free-running greedy completions
    contain, the one whose first occurrences fall on the most distinct steps."""
    free = [manual_greedy_ids(model, tokenizer(p)["input_ids"], steps) for p in prompts]
    first: dict[int, set[int]] = {}
    for toks in free:
        for step, t in enumerate(toks):
            if t not in toks[:step]:
                first.setdefault(t, set()).add(step)
    ends_some = [t for t in first if sum(t in toks for toks in free) < len(prompts)]
    extra = max(ends_some, key=lambda t: (len(first[t]), -t))
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted({tokenizer.eos_token_id, extra})
    try:
        yield extra
    finally:
        model.generation_config.eos_token_id = saved


@pytest.mark.parametrize("seed", [11, 12])
def test_rows_leaving_the_batch_equal_one_prompt_at_a_time(tiny, seed):
    import random

    model, tok = tiny
    rng = random.Random(seed)
    prompts = random_prompts(tok, rng, 7) + PROMPTS
    with torch.inference_mode(), early_eos(model, tok, prompts, 12):
        # a stop string that some rows produce mid-way: a piece of one row's completion
        free = reference_completion(model, tok, prompts[1], 12)
        stop = [free[len(free) // 2 : len(free) // 2 + 3] or "zz", "\n\n"]
        want = one_at_a_time(model, tok, prompts, 12, stop)
        full = one_at_a_time(model, tok, prompts, 12)
        assert len(set(map(len, want))) > 2, "rows must end at different steps"
        assert want != full, "some row must end at a stop string"
        for batch_size in (1, 2, 3, 5, len(prompts)):
            got = generate(model, tok, prompts, max_new_tokens=12, stop=stop, batch_size=batch_size)
            assert got == want, f"batch_size={batch_size}"


def test_rows_leaving_the_batch_with_a_shared_context(tiny):
    import random

    model, tok = tiny
    rng = random.Random(21)
    context = "Question: " + random_prompts(tok, rng, 1, 20, 30)[0] + "\nAnswer: 3\n\n"
    prompts = [context + q for q in random_prompts(tok, rng, 8)]
    with torch.inference_mode(), early_eos(model, tok, prompts, 10):
        want = one_at_a_time(model, tok, prompts, 10)
        assert len(set(map(len, want))) > 2, "rows must end at different steps"
        for batch_size in (1, 3, 8):
            got = generate(model, tok, prompts, max_new_tokens=10, batch_size=batch_size,
                           contexts=[context] * len(prompts))
            assert got == want, f"batch_size={batch_size}"


def test_a_row_ending_at_once_leaves_the_other_rows_alone(tiny):
    """One row stops at its first token (its stop string is that token's text); the other rows' completions
    are those of the batch without it."""
    import random

    model, tok = tiny
    prompts = random_prompts(tok, random.Random(5), 4)
    first = reference_completion(model, tok, prompts[0], 1)
    alone = generate(model, tok, prompts[1:], max_new_tokens=9, batch_size=4)
    stop = [first] if first.strip() else []
    together = generate(model, tok, prompts, max_new_tokens=9, batch_size=4, stop=stop)
    assert together[0] == "" or not stop
    assert [cut_at_stop(a, stop) for a in alone] == together[1:]


def test_decode_batch_respects_max_new_tokens(tiny):
    import random

    from clsharelora.evaluation.generation import decode_batch, layout

    model, tok = tiny
    queries = [tok(p)["input_ids"] for p in random_prompts(tok, random.Random(8), 5)]
    for max_new in (1, 2, 7):
        ids, mask = layout([], queries, tok.pad_token_id, torch.device("cpu"))
        with torch.inference_mode():
            new = decode_batch(model, tok, ids, mask, None, max_new_tokens=max_new, stop=(), eos=set(),
                               temperature=0.0, generator=None, last_only=True)
        assert [len(t) for t in new] == [max_new] * len(queries)
        with torch.inference_mode():
            want = [manual_greedy_ids(model, q, max_new) for q in queries]
        assert new == want


class _Recorder(torch.nn.Module):
    """The model, recording the next-token logits of every call (one row per row still decoding)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        self.calls.append(out.logits[:, -1].float().clone())
        return out


def test_every_decode_step_gives_each_remaining_row_its_own_logits(tiny):
    """Logits, not just tokens (a random-weight model's argmax can survive a wrong attention-mask row): at every
    call, each row still decoding gets the logits of its own prompt + tokens so far, computed unpadded and
    uncached, while other rows leave the batch. Rows leave at varied steps by sampling (seeded) with every
    8th token id counted as an EOS: a random model's greedy rows repeat one token and would all end at once."""
    import random

    from clsharelora.evaluation.generation import decode_batch, layout

    model, tok = tiny
    prompts = random_prompts(tok, random.Random(31), 8, 2, 30)
    queries = [tok(p)["input_ids"] for p in prompts]
    steps = 12
    eos = set(range(0, model.config.vocab_size, 8)) | {tok.eos_token_id}
    with torch.inference_mode():
        ids, mask = layout([], queries, tok.pad_token_id, torch.device("cpu"))
        rec = _Recorder(model)
        new = decode_batch(rec, tok, ids, mask, None, max_new_tokens=steps, stop=(), eos=eos, temperature=1.0,
                           generator=torch.Generator().manual_seed(3), last_only=True)
        assert len({len(t) for t in new}) > 2, "rows must leave the batch at different steps"
        for k, logits in enumerate(rec.calls):
            # a row that hit EOS after n tokens took part in calls 0..n; one that ran to the limit in 0..steps-1
            alive = [r for r in range(len(queries)) if (k <= len(new[r]) if len(new[r]) < steps else k < steps)]
            assert logits.shape[0] == len(alive), f"call {k}"
            for b, r in enumerate(alive):
                want = model(torch.tensor([queries[r] + new[r][:k]])).logits[0, -1].float()
                torch.testing.assert_close(logits[b], want, atol=1e-4, rtol=1e-4, msg=f"call {k}, row {r}")


def test_prompts_longer_than_the_model_allows_are_cut_from_the_left_as_lm_eval_does(tiny):
    """lm-eval's HFLM generate_until keeps the last max_length - max_gen_toks context tokens. A model with
    48 positions and 8 new tokens: a 64-token prompt is generated from its last 40 tokens (with or without
    a shared context); before, the whole prompt ran past the positions the model has."""
    from clsharelora.evaluation.generation import cut_prompts, prompt_token_limit

    model = load_model("tiny-llama", seed=1).eval()
    model.config.max_position_embeddings = 48
    _, tok = tiny
    context = "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer: 4\n\n"
    long = context + "Question: " + "how much is seven and eight and nine and ten " * 3 + "?\nAnswer:"
    short = context + "Question: 3?\nAnswer:"
    prompts = [long, short, short + " 3", "Hi"]
    assert prompt_token_limit(model, 8) == 40
    assert [len(tok(p)["input_ids"]) > 40 for p in prompts] == cut_prompts(model, tok, prompts, 8) \
        == [True, False, False, False]
    with torch.inference_mode():
        want = [manual_greedy_ids(model, tok(p)["input_ids"][-40:], 8) for p in prompts]
    want = [tok.decode(ids) for ids in want]
    seen = []  # (position ids, real input ids) of every model call

    def record(module, args, kwargs):
        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        pos = kwargs.get("position_ids")
        top = ids.shape[1] - 1 if pos is None else int(pos.max())  # (a shared context's forward: 0..n-1)
        seen.append((top, [row[m[-row.shape[0]:].bool()].tolist() for row, m in zip(ids, mask)]))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for contexts in (None, [context, context, context, ""]):
            seen.clear()
            got = generate(model, tok, prompts, max_new_tokens=8, batch_size=2, contexts=contexts)
            assert got == want, contexts
            assert max(p for p, _ in seen) < 48, contexts  # never a position the model does not have
            assert any(tok(long)["input_ids"][-40:] in rows for _, rows in seen), contexts
    finally:
        hook.remove()
    with pytest.raises(ConfigError, match="max_new_tokens=48 leaves no room for a prompt: the model has 48"):
        generate(model, tok, prompts, max_new_tokens=48)


def test_a_4096_position_model_keeps_2048_prompt_tokens_for_mmlu_pro_cot():
    """Llama-2's 4,096 positions less MMLU-Pro CoT's 2,048 new tokens: lm-eval's 2,048-token context."""
    from types import SimpleNamespace

    from clsharelora.evaluation.generation import prompt_token_limit
    from clsharelora.evaluation.multiple_choice import COT_MAX_NEW_TOKENS
    from clsharelora.models.configs import architecture

    assert prompt_token_limit(SimpleNamespace(config=architecture("llama2-7b")), COT_MAX_NEW_TOKENS) == 2048

