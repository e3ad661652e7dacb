"""Batched generation must equal unbatched greedy decoding, and stop strings must cut and end it."""

from __future__ import annotations

import pytest
import torch

from clsharelora.errors import ConfigError
from clsharelora.evaluation.generation import (
    StopOnStrings, cut_at_stop, eos_ids, eval_context, generate, length_sorted_batches,
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


def test_stop_criterion_ignores_the_prompt_and_is_per_row(tiny):
    _, tok = tiny
    prompt = tok("Question: one", add_special_tokens=False)["input_ids"]
    rows = [prompt + tok(" two Question:", add_special_tokens=False)["input_ids"],
            prompt + tok(" two three four", add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))
    batch = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    crit = StopOnStrings(tok, ["Question:"], prompt_len=len(prompt))
    assert crit(batch, None).tolist() == [True, False]  # the prompt's own "Question:" does not count


def test_length_sorted_batches_cover_every_index_once():
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert all(len(b) <= 3 for b in batches)
    with pytest.raises(ConfigError):
        length_sorted_batches(lengths, 0)


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
