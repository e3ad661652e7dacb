"""The one encoding rule: training labels == scored tokens == the tail of the joint tokenisation, on a real
Llama-style SentencePiece tokenizer (dummy prefix space) and on SmolLM2's GPT-2-style BPE."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from lm_eval.api.model import TemplateLM

from clsharelora.benchmarks.tokenized import IGNORE_INDEX, encode_example
from clsharelora.data.records import Record
from clsharelora.encoding import encode_pair
from clsharelora.errors import ConfigError
from clsharelora.evaluation.nll import letter_token_ids, target_nlls
from clsharelora.prompts import LETTERS, prompt_for, target_for

MBPP = Record("mbpp/train/1", "mbpp", "train", "Write a function to double x.", "def f(x):\n    return 2 * x",
              "", meta={"test_list": ["assert f(2) == 4", "assert f(0) == 0"]})
ALPACA = Record("codealpaca/0", "codealpaca", "train", "Double a number.", "def f(x):\n    return x * 2", "",
                meta={"instruction": "Double a number.", "input": ""})
HUMANEVAL = Record("HumanEval/0", "humaneval", "test", 'def f(x):\n    """Double x."""\n', "    return 2 * x\n", "")
MMLU = Record("mmlu/dev/a/0", "mmlu", "dev", "What is 2+2?", "B", "B", ("3", "4", "5", "6"), "elementary_mathematics")
MMLU_PRO = Record("mmlu_pro/validation/0", "mmlu_pro", "validation", "Pick J.", "J", "J",
                  tuple(f"option {i}" for i in range(10)), "math")
GSM8K = Record("gsm8k/train/0", "gsm8k", "train", "Natalia sold 48 clips. How many?",
               "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 5", "5")

CASES = [(prompt_for(r), target_for(r)) for r in (MBPP, ALPACA, HUMANEVAL, MMLU, MMLU_PRO, GSM8K)] + [
    ("Answer:", "\nnewline first"),            # target starting with a newline
    ("Answer:", "  two spaces first"),
    ("Answer: ", "17"),                         # prompt ending in a space (merges with the target in BPE)
    ("unbeliev", "able"),                       # a word split across the boundary
    ("Q: Grüße aus Köln?\nA:", " 日本語のテキスト ünïcödé ✓"),
    ("Réponse :", "\n\n  élan"),
]


def random_cases(seed: int, n: int) -> list[tuple[str, str]]:
    """Fresh random pairs around the boundaries that tokenizers treat specially."""
    rnd = random.Random(seed)
    words = ["def", "return", "Answer", ":", "A", "ü", "日本", "42", "x", "(", ")", "#", "\n", " ", "  ", "\t"]
    joins = ["", " ", "\n", "  ", "\n    "]
    def text(k):
        return "".join(rnd.choice(words) + rnd.choice(joins) for _ in range(k))
    return [("Q " + text(rnd.randint(1, 6)), text(rnd.randint(1, 6)) + "z") for _ in range(n)]


def joint(tok, prompt, target):
    return tok(prompt + target, add_special_tokens=True)["input_ids"]


def check_rule(tok, prompt, target):
    """The rule's definition, computed from the tokenizer alone."""
    ids, n = encode_pair(tok, prompt, target)
    whole = joint(tok, prompt, target)
    assert ids == whole and 1 <= n < len(whole)
    # the context is a prefix of the prompt's own tokenisation (what generation feeds the model) and the first
    # target token is where the two tokenisations part (or the prompt's tokens simply end)
    own = tok(prompt, add_special_tokens=True)["input_ids"]
    split = len(ids) - n
    assert own[:split] == ids[:split]
    assert split == len(own) or own[split] != ids[split]
    # the context spells a prefix of the prompt: every target character lies in the target tokens
    assert tok.decode(ids, skip_special_tokens=True) == prompt + target
    assert prompt.startswith(tok.decode(ids[:split], skip_special_tokens=True))
    # training labels: exactly the same target tokens, then EOS
    example = encode_example(tok, prompt, target)
    assert example["input_ids"] == whole + [tok.eos_token_id]
    labelled = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert labelled == whole[split:] + [tok.eos_token_id]
    assert example["labels"][:split] == [IGNORE_INDEX] * split
    return ids, n


@pytest.fixture
def tok(any_tokenizer):
    return any_tokenizer


@pytest.mark.parametrize("prompt, target", CASES)
def test_training_labels_are_the_tail_of_the_joint_tokenisation(tok, prompt, target):
    check_rule(tok, prompt, target)


def test_fresh_random_pairs(tok):
    for prompt, target in random_cases(random.randrange(10**6), 25):
        check_rule(tok, prompt, target)


def test_code_target_after_newline_is_trained_as_scored_on_sentencepiece(llama_sp_tokenizer):
    """The issue's example: "def" after "\\n" is one token without the dummy-prefix "▁" in the joint text;
    a separately tokenised target would be trained on "▁def", which scoring never asks for."""
    tok = llama_sp_tokenizer
    prompt, target = prompt_for(MBPP), target_for(MBPP)
    example = encode_example(tok, prompt, target)
    first = next(t for t in example["labels"] if t != IGNORE_INDEX)
    assert tok.convert_ids_to_tokens(first) == "def"
    ids, n = encode_pair(tok, prompt, target)
    assert ids[-n] == first


def test_boundary_merge_makes_the_straddling_token_the_first_target_token(smollm2_tokenizer):
    """HumanEval / code: SmolLM2 joins the prompt's last "\\n" and the body's indent into one token."""
    tok = smollm2_tokenizer
    prompt, target = prompt_for(HUMANEVAL), target_for(HUMANEVAL)
    own = tok(prompt)["input_ids"]
    ids, n = check_rule(tok, prompt, target)
    split = len(ids) - n
    assert split == len(own) - 1, "the prompt's final newline token is not in the context"
    assert tok.decode(ids[split:split + 1]) == "\n   " and tok.decode(ids[split:]) == "\n" + target
    example = encode_example(tok, prompt, target)
    assert example["labels"][split] == ids[split]


def test_split_equals_lm_eval_where_the_prompt_has_no_trailing_whitespace(tok):
    """lm-eval's own loglikelihood split (TemplateLM._encode_pair, causal backend) as the reference."""
    harness = SimpleNamespace(backend="causal", tok_encode=lambda s: tok(s, add_special_tokens=True)["input_ids"])
    cases = [c for c in CASES + random_cases(random.randrange(10**6), 25) if c[0] == c[0].rstrip()]
    for prompt, target in cases:
        context, continuation = TemplateLM._encode_pair(harness, prompt, target)
        ids, n = encode_pair(tok, prompt, target)
        if tok(prompt)["input_ids"] == ids[: len(ids) - n]:  # no straddling token: the two rules coincide
            assert (ids[:-n], ids[-n:]) == (context, continuation)


@pytest.fixture(scope="module")
def tiny_model():
    from clsharelora.models import load_model

    return load_model("tiny-llama", seed=3).eval()  # its 49k vocabulary covers both tokenizers' ids


def test_scored_nll_is_the_training_loss_of_the_same_tokens(tok, tiny_model):
    """target_nlls and the training loss (HF's shifted cross-entropy on encode_example's labels, EOS left
    out) are the same number: the same tokens are trained and scored."""
    model = tiny_model
    pairs = [CASES[0], CASES[2], CASES[3], CASES[5], CASES[8]]
    for (prompt, target), (total, count) in zip(pairs, target_nlls(model, tok, pairs, batch_size=2)):
        example = encode_example(tok, prompt, target)
        ids = torch.tensor([example["input_ids"][:-1]])
        labels = torch.tensor([example["labels"][:-1]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        assert count == int((labels != IGNORE_INDEX).sum())
        assert total == pytest.approx(float(loss) * count, rel=1e-4)


@pytest.mark.parametrize("record, shots", [(MMLU, ()), (MMLU, (MMLU,)), (MMLU_PRO, ())])
def test_letter_ids_are_the_joint_tokens_of_the_letters(tok, record, shots):
    prompt = prompt_for(record, shots)
    letters = [" " + x for x in LETTERS[: len(record.choices)]]
    got = letter_token_ids(tok, prompt, letters)
    for letter, token in zip(letters, got):
        ids, n = encode_pair(tok, prompt, letter)
        assert n == 1 and ids[-1] == token and ids[:-1] == tok(prompt)["input_ids"]
        assert encode_example(tok, prompt, letter)["labels"][-2] == token  # what MMLU training learns


def test_bad_pairs_are_config_errors(smollm2_tokenizer):
    tok = smollm2_tokenizer
    with pytest.raises(ConfigError, match="empty target"):
        encode_pair(tok, "x", "")
    with pytest.raises(ConfigError, match="no context"):
        encode_pair(tok, "", "hello")  # SmolLM2 adds no BOS: nothing to condition the first token on
    with pytest.raises(ConfigError, match="single token"):
        letter_token_ids(tok, "x\nAnswer:", [" Antidisestablishmentarianism"])
