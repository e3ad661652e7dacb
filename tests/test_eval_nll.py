"""Teacher-forced NLL and letter log-probs against independent per-example computations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from clsharelora.errors import ConfigError
from clsharelora.evaluation.nll import answer_nll, encode_pair, letter_logprobs, letter_token_ids, target_nlls
from clsharelora.models import load_model, load_tokenizer

WORDS = "the cat sat on a mat while seven dogs ran past quickly and one bird sang loudly near 42 trees".split()


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=2).eval(), load_tokenizer("tiny-llama")


def random_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = " ".join(rnd.choices(WORDS, k=rnd.randint(1, 25))) + "\nAnswer:"
        target = " " + " ".join(rnd.choices(WORDS, k=rnd.randint(1, 12)))
        pairs.append((prompt, target))
    return pairs


def independent_sum_and_count(model, tok, prompt: str, target: str) -> tuple[float, int]:
    """HF's own shifted cross-entropy (`labels=`) over the target tokens of one unpadded example."""
    n_prompt = len(tok(prompt)["input_ids"])
    ids = torch.tensor([tok(prompt + target)["input_ids"]])
    labels = ids.clone()
    labels[:, :n_prompt] = -100
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
    count = ids.shape[1] - n_prompt
    return float(loss) * count, count


def test_answer_nll_equals_token_weighted_per_example_losses(tiny):
    model, tok = tiny
    pairs = random_pairs(seed=random.randrange(10**6), n=7)
    parts = [independent_sum_and_count(model, tok, p, t) for p, t in pairs]
    expected = sum(s for s, _ in parts) / sum(c for _, c in parts)
    got = answer_nll(model, tok, pairs, batch_size=3)
    assert got == pytest.approx(expected, rel=1e-5)
    # token-weighted, not a mean of per-example means (they differ when lengths differ)
    per_example_mean = sum(s / c for s, c in parts) / len(parts)
    assert abs(per_example_mean - expected) > 1e-6
    for (s, c), (gs, gc) in zip(parts, target_nlls(model, tok, pairs, batch_size=4)):
        assert gc == c and gs == pytest.approx(s, rel=1e-5)


def test_cpu_scoring_does_not_pad_short_items_to_a_long_ones_length(tiny):
    """On a CPU a forward costs about 16 tokens, so a 3-token prompt is never padded to 300 tokens: the
    widest forward over the short prompts stays short (full batches would make it 300 wide), and the
    per-item NLLs still equal the unpadded per-example ones."""
    model, tok = tiny
    pairs = random_pairs(seed=random.randrange(10**6), n=5) + [(" ".join(WORDS * 12) + "\nAnswer:", " seven")]
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, k: widths.append(tuple(k["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        got = target_nlls(model, tok, pairs, batch_size=8)
    finally:
        hook.remove()
    long_len = len(tok(pairs[-1][0] + pairs[-1][1])["input_ids"])
    assert (1, long_len) in widths and all(w < 60 for b, w in widths if (b, w) != (1, long_len))
    for (p, t), (gs, gc) in zip(pairs, got):
        s, c = independent_sum_and_count(model, tok, p, t)
        assert gc == c and gs == pytest.approx(s, rel=1e-5)


def test_random_model_nll_is_near_uniform(tiny):
    model, tok = tiny
    nll = answer_nll(model, tok, random_pairs(seed=1, n=4))
    assert 0.5 * math.log(len(tok)) < nll < 2 * math.log(len(tok))


def test_encode_pair_scores_the_straddling_token_when_the_tokeniser_merges_the_boundary(tiny):
    _, tok = tiny
    ids, n = encode_pair(tok, "Answer:", " 17")
    assert ids == tok("Answer: 17")["input_ids"] and n == len(tok(" 17", add_special_tokens=False)["input_ids"])
    # "unbeliev" + "able": the joint text's token "vable" straddles the boundary; it is the first target token
    # and the context is the prompt's own tokens before it (clsharelora.encoding; tests/test_encoding.py)
    prompt, target = "unbeliev", "able"
    own = tok(prompt)["input_ids"]
    assert tok(prompt + target)["input_ids"][: len(own)] != own
    ids, n = encode_pair(tok, prompt, target)
    assert ids == tok(prompt + target)["input_ids"] and ids[:-n] == own[:-1] and tok.decode(ids[-n:]) == "vable"
    with pytest.raises(ConfigError, match="empty target"):
        encode_pair(tok, "x", "")


def test_letter_logprobs_equal_full_softmax(tiny):
    model, tok = tiny
    rnd = random.Random(random.randrange(10**6))
    prompts = [" ".join(rnd.choices(WORDS, k=rnd.randint(2, 30))) + "\nAnswer:" for _ in range(6)]
    letters = [" A", " B", " C", " D", " J"]
    got = letter_logprobs(model, tok, prompts, letters, batch_size=4)
    ids = [tok(letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            logits = model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].double()
        want = torch.log(torch.exp(logits[ids] - logits.max()) / torch.exp(logits - logits.max()).sum())
        assert torch.allclose(got[row].double(), want, atol=1e-5)


def test_letter_logprobs_with_shared_context_equal_uncached(tiny):
    model, tok = tiny
    context = "Q: one\nA. x\nB. y\nAnswer: A\n\n"
    prompts = [context + f"Q: item {i} {'long ' * i}\nA. x\nB. y\nAnswer:" for i in range(5)]
    letters = [" A", " B"]
    plain = letter_logprobs(model, tok, prompts, letters, batch_size=2)
    cached = letter_logprobs(model, tok, prompts, letters, batch_size=2, contexts=[context] * 5)
    assert torch.allclose(plain, cached, atol=1e-5)


def test_letter_must_be_one_token(tiny):
    _, tok = tiny
    assert letter_token_ids(tok, "x\nAnswer:", [" A"]) == tok(" A", add_special_tokens=False)["input_ids"]
    with pytest.raises(ConfigError, match="single token"):
        letter_token_ids(tok, "x\nAnswer:", [" Antidisestablishmentarianism"])
