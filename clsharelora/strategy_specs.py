"""Strategy specs of `compare --strategies` and a study's `strategies:`: ADAPTER[(K=V,...)][:VARIANT][+CL[(K=V,...)]].

A spec means the same run under any config: `lora` is LoRA with naive training, `lora+ewc(ewc_lambda=100)` is
LoRA with EWC at lambda 100 and every other EWC option at its default. The config's `cl:` block is never
inherited (a config whose `cl:` is ewc would otherwise turn `lora` into LoRA + EWC). The config's adapter
options that the spec's adapter also knows (r, alpha, targets) are kept: they are the setting that the
strategies share. Two specs that resolve to the same adapter and CL method with the same options are one
error before anything is created.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from .config import parse_value, switch_strategy
from .errors import ConfigError

SYNTAX = "ADAPTER[(K=V,...)][:VARIANT][+CL[(K=V,...)]], e.g. lora, sharelora:share_a, lora+ewc(ewc_lambda=100)"
_NAME = r"[A-Za-z0-9_.-]+"
_SPEC = re.compile(rf"(?P<adapter>{_NAME})(?:\((?P<adapter_opts>.*?)\))?(?::(?P<variant>{_NAME}))?"
                   rf"(?:\+(?P<cl>{_NAME})(?:\((?P<cl_opts>.*)\))?)?")


@dataclass(frozen=True)
class Spec:
    """One parsed spec: names and the options it gives (nothing resolved against a config yet)."""

    text: str
    adapter: str
    adapter_options: dict[str, Any]
    variant: str | None
    cl: str
    cl_options: dict[str, Any]

    @property
    def label(self) -> str:
        """The run folder: lora, sharelora-share_a, lora-ewc, lora-ewc-ewc_lambda_100 (options sorted; only the
        characters pathsafe's name rule allows)."""
        parts = [self.adapter, *_pairs(self.adapter_options), *([self.variant] if self.variant else []),
                 *([self.cl] if self.cl != "naive" or self.cl_options else []), *_pairs(self.cl_options)]
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", "-".join(parts)).strip("-.")


def _pairs(options: dict[str, Any]) -> list[str]:
    return [f"{k}_{v}" for k, v in sorted(options.items())]


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets: 'lora,lora+ewc(ewc_lambda=1,decay=0.9)' -> two specs."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _options(raw: str | None, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in split_top_level(raw or ""):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"strategy {text!r}: option {item.strip()!r} is not KEY=VALUE; allowed: {SYNTAX}")
        if key in out:
            raise ConfigError(f"strategy {text!r}: option {key!r} is given twice")
        out[key] = parse_value(value)
    return out


def parse(text: str) -> Spec:
    """'sharelora:share_b+replay(memory=64)' -> Spec('sharelora', {}, 'share_b', 'replay', {'memory': 64})."""
    text = text.strip()
    match = _SPEC.fullmatch(text)
    if not match:
        raise ConfigError(f"strategy {text!r} is not a strategy spec; allowed: {SYNTAX}")
    return Spec(text=text, adapter=match["adapter"], adapter_options=_options(match["adapter_opts"], text),
                variant=match["variant"], cl=match["cl"] or "naive", cl_options=_options(match["cl_opts"], text))


def parse_list(text: str) -> list[Spec]:
    """The comma list of `compare --strategies` (commas inside brackets belong to options)."""
    entries = split_top_level(text)
    if any(not e.strip() for e in entries):
        raise ConfigError(f"--strategies {text!r}: an empty entry; allowed: a comma list of {SYNTAX}")
    return [parse(e) for e in entries]


def blocks(spec: Spec, base_adapter: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run config's `adapter:` and `cl:` blocks for `spec`: the adapter starts from the base config's
    options it knows; the CL block is the spec's own (never the base config's)."""
    adapter = {**switch_strategy(base_adapter, spec.adapter, "adapter"), **spec.adapter_options}
    if spec.variant:
        adapter["variant"] = spec.variant
    return adapter, {"name": spec.cl, **spec.cl_options}


def note_ignored_cl(base_cl: Any, where: str) -> None:
    """Say once that a config's non-naive `cl:` block does not reach the strategies (their specs decide)."""
    block = {"name": base_cl} if isinstance(base_cl, str) else dict(base_cl or {})
    if block and block != {"name": "naive"}:
        print(f"note: {where}: the config's cl: block {block} is not used; each strategy's CL method comes from "
              f"its spec (lora+ewc, lora+ewc(ewc_lambda=100)); a spec without +CL trains naively", file=sys.stderr)


def resolved(adapter: dict[str, Any], cl: dict[str, Any]) -> tuple:
    """What a run is made of, defaults filled in: equal (==, so 1000 equals 1000.0) for two specs exactly
    when they run the same."""
    from . import registry

    def full(block: dict[str, Any], kind: str) -> tuple:
        defaults = registry.get(block["name"], kind).defaults
        return block["name"], {**defaults, **{k: v for k, v in block.items() if k != "name"}}

    return full(adapter, "adapter"), full(cl, "cl")


def check_distinct(named: list[tuple[str, dict[str, Any], dict[str, Any]]], where: str) -> None:
    """(label, adapter block, cl block) per strategy: two that resolve to the same run are an error."""
    seen: list[tuple[tuple, str]] = []
    for label, adapter, cl in named:
        key = resolved(adapter, cl)
        same = next((other for k, other in seen if k == key), None)
        if same is not None:
            raise ConfigError(f"{where}: strategies {same!r} and {label!r} resolve to the same run (adapter "
                              f"{adapter['name']}, cl {cl['name']}, same options); give each strategy once")
        seen.append((key, label))
