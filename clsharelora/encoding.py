"""The one rule that turns a (prompt, target) pair into token ids, shared by training and scoring.

Training labels (`benchmarks/tokenized.py`), teacher-forced NLL (`evaluation/nll.py`) and the option-letter
tokens of multiple-choice scoring all come from `encode_pair`, so the tokens a target is trained on are
exactly the tokens it is scored on.

The rule: tokenise prompt + target as ONE text (the joint tokenisation, the tokenizer's leading special
tokens included) and split it where it stops agreeing with the prompt's own tokenisation. Tokenising the
target on its own is never right for SentencePiece tokenizers (Llama-2 / Mistral): their dummy prefix space
turns "def" after a newline into "▁def", a token the joint text never contains.

Boundary merge: when a token straddles the prompt/target boundary (SmolLM2's BPE joins a prompt's final
"\\n" and a code target's leading spaces into one "\\n   " token), that token is the first TARGET token.
It is what the model has to predict after the prompt tokens before it, so the target is never cut and the
context stays a prefix of the prompt's own tokenisation (what generation feeds the model); the price is that
the scored text starts with the prompt's last few characters. lm-eval's `_encode_pair` moves trailing
whitespace into the continuation for the same reason; on pairs without trailing prompt whitespace the two
rules give the same split.
"""

from __future__ import annotations

from .errors import ConfigError


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """(token ids of prompt + target tokenised jointly, number of target tokens at the end).

    The target tokens are the joint ids from the first one that differs from the prompt's own ids; at
    least one token of context always precedes them (a ConfigError otherwise: nothing to condition on).
    """
    if not target:
        raise ConfigError(f"empty target for prompt ending {prompt[-40:]!r}: training and NLL need at least one token")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = tokenizer(prompt + target, add_special_tokens=True)["input_ids"]
    split = _common_prefix(prompt_ids, ids)
    if split == len(ids):
        raise ConfigError(f"target {target[:40]!r} adds no token after prompt ending {prompt[-40:]!r}")
    if split == 0:
        raise ConfigError(
            f"prompt {prompt[-40:]!r} and target {target[:40]!r} share their first token: the first target "
            "token has no context (give a non-empty prompt)"
        )
    return ids, len(ids) - split
