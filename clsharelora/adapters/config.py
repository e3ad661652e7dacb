"""ShareLoRA configuration: the variant, peft's LoRA hyper-parameters, and which modules the adapter targets.

Target resolution lives here because it defines what the `targets` option *means*: a "q,v" short-name
list, "all-linear", a list of module-name suffixes, or a regex "re:...". Short names are mapped onto the
module names of Llama-style (q_proj ...), GPT-2 (Conv1D c_attn/c_proj/c_fc) and BERT/RoBERTa (query/key/
value/...dense) models. GPT-2 fuses q, k and v into one Conv1D `c_attn`; peft adapts a module as a whole,
so any of q/k/v selects all of `c_attn` there (the closed form in counting.py counts it the same way).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from transformers.pytorch_utils import Conv1D

from ..errors import ConfigError
from .dropout import DEFAULT as DROPOUT_MASKS_DEFAULT
from .dropout import check as check_dropout_masks

VARIANTS = ("lora", "share_a", "share_b", "share_ab")
#: which peft LoRA matrices a variant shares across layers (per projection type)
SHARED_MATRICES: dict[str, tuple[str, ...]] = {
    "lora": (),
    "share_a": ("lora_A",),
    "share_b": ("lora_B",),
    "share_ab": ("lora_A", "lora_B"),
}

#: short target name -> regex searched in a module's full name (must match at the end)
TARGET_ALIASES: dict[str, str] = {
    "q": r"(^|\.)(q_proj|query|c_attn)$",
    "k": r"(^|\.)(k_proj|key|c_attn)$",
    "v": r"(^|\.)(v_proj|value|c_attn)$",
    "o": r"(^|\.)(o_proj|out_proj|attention\.output\.dense|attn\.c_proj)$",
    "gate": r"(^|\.)gate_proj$",
    "up": r"(^|\.)(up_proj|intermediate\.dense|mlp\.c_fc)$",
    "down": r"(^|\.)(down_proj|mlp\.c_proj|layer\.\d+\.output\.dense)$",
}
ALL_LINEAR = "all-linear"
REGEX_PREFIX = "re:"
LINEAR_TYPES = (torch.nn.Linear, Conv1D)
_LAYER_INDEX = re.compile(r"(^|\.)\d+(\.|$)")


def parse_targets(targets: Any) -> str | tuple[str, ...]:
    """Normalise the `targets` option: "all-linear", "re:<regex>", or a tuple of tokens ("q,v" or a list)."""
    if isinstance(targets, str):
        text = targets.strip()
        if text == ALL_LINEAR:
            return ALL_LINEAR
        if text.startswith(REGEX_PREFIX):
            pattern = text[len(REGEX_PREFIX):]
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"option 'targets': invalid regex {pattern!r}: {exc}") from None
            if not pattern:
                raise ConfigError("option 'targets': empty regex after 're:'")
            return text
        tokens = tuple(t.strip() for t in text.split(","))
    elif isinstance(targets, (list, tuple)) and all(isinstance(t, str) for t in targets):
        tokens = tuple(t.strip() for t in targets)
    else:
        raise ConfigError(
            f"option 'targets' must be 'all-linear', a 'q,v'-style string, a list of names or 're:<regex>'; "
            f"got {targets!r}"
        )
    if not tokens or any(not t for t in tokens):
        raise ConfigError(f"option 'targets' has an empty entry: {targets!r}")
    return tokens


def is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, LINEAR_TYPES)


def in_layer(name: str) -> bool:
    """True for modules inside a repeated block (their name has a numeric layer index)."""
    return _LAYER_INDEX.search(name) is not None


def _token_matches(token: str, name: str) -> bool:
    if token in TARGET_ALIASES:
        return re.search(TARGET_ALIASES[token], name) is not None
    return name == token or name.endswith("." + token)


def resolve_targets(model: torch.nn.Module, targets: Any) -> list[str]:
    """Full names (as in `model.named_modules()`) of the linear modules the `targets` option selects.

    Every token of a list must select at least one module, so a typo cannot silently train fewer modules.
    """
    spec = parse_targets(targets)
    linear = [name for name, module in model.named_modules() if name and is_linear(module)]
    if spec == ALL_LINEAR:
        chosen = [n for n in linear if in_layer(n)]
        what = "'all-linear' (linear modules inside numbered layers)"
    elif isinstance(spec, str):
        pattern = re.compile(spec[len(REGEX_PREFIX):])
        chosen = [n for n in linear if pattern.fullmatch(n)]
        what = f"regex {spec!r}"
    else:
        for token in spec:
            if not any(_token_matches(token, n) for n in linear):
                raise ConfigError(
                    f"option 'targets': {token!r} matches no linear module of {type(model).__name__} "
                    f"(short names: {', '.join(TARGET_ALIASES)}; or a module-name suffix such as "
                    f"{linear[0].rsplit('.', 1)[-1] if linear else 'q_proj'!r})"
                )
        chosen = [n for n in linear if any(_token_matches(t, n) for t in spec)]
        what = repr(",".join(spec))
    if not chosen:
        raise ConfigError(f"option 'targets': {what} matches no linear module of {type(model).__name__}")
    return chosen


@dataclass(frozen=True)
class ShareLoraConfig:
    """One adapter's settings. r/alpha/dropout/rslora mean exactly what they mean in peft's LoraConfig;
    dropout_masks (dropout.py) says whether projections reading one input share its dropout mask."""

    variant: str = "share_a"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    targets: Any = ALL_LINEAR
    rslora: bool = False
    dropout_masks: str = DROPOUT_MASKS_DEFAULT
    shared: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"option 'variant': unknown variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"option 'r' must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"option 'alpha' must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"option 'dropout' must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.rslora, bool):
            raise ConfigError(f"option 'rslora' must be true or false, got {self.rslora!r}")
        check_dropout_masks(self.dropout_masks)
        parse_targets(self.targets)
        object.__setattr__(self, "shared", SHARED_MATRICES[self.variant])

    def lora_config(self, target_modules: Iterable[str], task_type: str | None = None):
        """peft's LoraConfig for exactly these module names (exact names: no accidental suffix matches)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=float(self.dropout), use_rslora=self.rslora,
            target_modules=sorted(target_modules), bias="none", task_type=task_type,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shared"] = list(self.shared)
        d["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        return d
