"""Sharing groups and parameter tying for ShareLoRA on top of peft's LoRA layers.

A group is one projection type: the module name with its layer index replaced by "*"
(`model.layers.*.self_attn.q_proj`), so q never shares with k and every group has one shape, GQA included.
Tying makes every member's `lora_A[adapter].weight` (and/or `lora_B`) the *same* Parameter object as the
group's owner (its first member, the lowest layer index). Consequences, all relied on and tested:
`model.parameters()` / `named_parameters()` yield a shared Parameter once (under the owner's name), so the
optimizer sees it once and autograd sums the gradient contributions of all layers into it; `state_dict()`
still lists every member's key (same storage), which is why peft's `save_pretrained` writes per-layer copies
(it clones aliased tensors for safetensors). `retie` turns those copies back into one tensor per group.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .config import SHARED_MATRICES, VARIANTS

SPEC_FILE = "sharelora.json"
SPEC_FORMAT = "clsharelora.sharelora/1"
#: attribute under which apply/load/retie remember the spec on the peft model (so `retie(model)` works)
SPEC_ATTR = "_clsharelora_sharing_spec"
_LAYER_INDEX = re.compile(r"(^|\.)(\d+)(\.|$)")


def type_key(name: str) -> str:
    """The projection type of a module: its name with the (first) layer index replaced by '*'."""
    return _LAYER_INDEX.sub(lambda m: f"{m.group(1)}*{m.group(3)}", name, count=1)


def layer_index(name: str) -> int | None:
    m = _LAYER_INDEX.search(name)
    return int(m.group(2)) if m else None


@dataclass
class SharingSpec:
    """What is shared: the variant, which LoRA matrices, and the member module names of each group."""

    variant: str
    groups: dict[str, list[str]]
    adapter_name: str = "default"
    shared: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"sharing spec: unknown variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        self.shared = SHARED_MATRICES[self.variant]

    def to_json(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, "variant": self.variant, "shared": list(self.shared),
                "adapter_name": self.adapter_name, "groups": self.groups}

    @classmethod
    def from_json(cls, data: Any, source: str = "sharing spec") -> "SharingSpec":
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            raise DataError(f"{source}: not a ShareLoRA sharing spec (expected format {SPEC_FORMAT!r})")
        for key in ("variant", "groups"):
            if key not in data:
                raise DataError(f"{source}: missing field {key!r}")
        groups = data["groups"]
        if not isinstance(groups, dict) or not all(
            isinstance(v, list) and v and all(isinstance(n, str) for n in v) for v in groups.values()
        ):
            raise DataError(f"{source}: field 'groups' must map a type to a non-empty list of module names")
        try:
            spec = cls(variant=data["variant"], groups=groups, adapter_name=data.get("adapter_name", "default"))
        except ConfigError as exc:
            raise DataError(f"{source}: {exc}") from None
        if list(spec.shared) != list(data.get("shared", spec.shared)):
            raise DataError(f"{source}: field 'shared' {data['shared']} contradicts variant {spec.variant!r}")
        return spec

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / SPEC_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SharingSpec":
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.is_file():
            raise DataError(f"{path}: no ShareLoRA sharing spec here (saved by clsharelora's save as {SPEC_FILE})")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc})") from None
        return cls.from_json(data, source=str(path))


def build_spec(target_names: list[str], variant: str, adapter_name: str = "default") -> SharingSpec:
    """Group target module names by projection type, members ordered by layer index (owner first)."""
    groups: dict[str, list[str]] = {}
    for name in target_names:
        groups.setdefault(type_key(name), []).append(name)
    for members in groups.values():
        members.sort(key=lambda n: (layer_index(n) is None, layer_index(n) or 0, n))
    return SharingSpec(variant=variant, groups=groups, adapter_name=adapter_name)


def _lora_module(model: torch.nn.Module, name: str):
    """The peft LoRA layer wrapping base-model module `name`, found via the peft model's base model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        module = base.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"sharing spec names module {name!r}, which this model does not have") from None
    if not hasattr(module, "lora_A"):
        raise ConfigError(f"module {name!r} carries no LoRA adapter (was the adapter applied to it?)")
    return module


def _matrix(module, matrix: str, adapter: str, name: str) -> torch.nn.Linear:
    table = getattr(module, matrix)
    if adapter not in table:
        raise ConfigError(f"module {name!r} has no adapter {adapter!r} (has: {', '.join(table) or 'none'})")
    return table[adapter]


def shared_parameters(model: torch.nn.Module, spec: SharingSpec) -> dict[tuple[str, str], list[torch.nn.Parameter]]:
    """(group, matrix) -> the weight Parameter of each member, in member order (for checks and tests)."""
    out = {}
    for key, members in spec.groups.items():
        for matrix in spec.shared:
            out[(key, matrix)] = [
                _matrix(_lora_module(model, n), matrix, spec.adapter_name, n).weight for n in members
            ]
    return out


def tie(model: torch.nn.Module, spec: SharingSpec) -> torch.nn.Module:
    """Make every member of each group use its owner's Parameter for the shared matrices (in place)."""
    for (key, matrix), params in shared_parameters(model, spec).items():
        owner = params[0]
        for name, p in zip(spec.groups[key][1:], params[1:]):
            if p.shape != owner.shape:
                raise ConfigError(
                    f"cannot share {matrix} in group {key!r}: {name} has shape {tuple(p.shape)}, "
                    f"owner {spec.groups[key][0]} has {tuple(owner.shape)}"
                )
        for name in spec.groups[key][1:]:
            _matrix(_lora_module(model, name), matrix, spec.adapter_name, name).weight = owner
    setattr(model, SPEC_ATTR, spec)
    return model


def is_tied(model: torch.nn.Module, spec: SharingSpec | None = None) -> bool:
    """True when each shared matrix of each group is one Parameter object across all its members."""
    spec = spec or getattr(model, SPEC_ATTR, None)
    if spec is None:
        raise ConfigError("is_tied: this model carries no sharing spec; pass one")
    return all(all(p is params[0] for p in params) for params in shared_parameters(model, spec).values())


def retie(model: torch.nn.Module, spec: SharingSpec | dict | str | os.PathLike | None = None, *,
          adapter_name: str | None = None) -> torch.nn.Module:
    """Restore one tensor per shared group after a load that produced per-layer copies (in place).

    `spec`: a SharingSpec, its JSON dict, the adapter directory (or its sharelora.json), or None for the spec
    the model already carries. peft does not record where an adapter was loaded from, so after a bare
    `PeftModel.from_pretrained(base, d)` pass `d`: `retie(model, d)`. The copies must be bit-identical (they
    are clones of one tensor); anything else means the checkpoint was not saved tied, and is refused.
    """
    source = "sharing spec"
    if spec is None:
        spec = getattr(model, SPEC_ATTR, None)
        if spec is None:
            raise ConfigError("retie: the model carries no sharing spec; pass the adapter directory: retie(model, d)")
    elif isinstance(spec, dict):
        spec = SharingSpec.from_json(spec)
    elif isinstance(spec, (str, os.PathLike)):
        source = str(Path(spec) / SPEC_FILE if Path(spec).is_dir() else spec)
        spec = SharingSpec.load(spec)
    if adapter_name is not None and adapter_name != spec.adapter_name:
        spec = SharingSpec(variant=spec.variant, groups=spec.groups, adapter_name=adapter_name)
    for (key, matrix), params in shared_parameters(model, spec).items():
        owner = params[0]
        for name, p in zip(spec.groups[key][1:], params[1:]):
            if p is not owner and (p.shape != owner.shape or not torch.equal(p.detach(), owner.detach())):
                raise DataError(
                    f"{source}: group {key!r} shares {matrix}, but the copy loaded for {name} differs from "
                    f"{spec.groups[key][0]}'s; the checkpoint was not saved from a tied model"
                )
    return tie(model, spec)
