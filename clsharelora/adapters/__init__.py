"""Adapters over peft: LoRA and ShareLoRA (A and/or B shared across layers per projection type), VeRA.

See docs/sharelora.md. The strategy plug-ins in strategies/ (lora, sharelora, vera) wrap these functions.
"""

from .config import ALL_LINEAR, SHARED_MATRICES, TARGET_ALIASES, VARIANTS, ShareLoraConfig, resolve_targets
from .counting import count_trainable, expected_params, optimizer_state_bytes, projection_dims
from .model import apply_sharelora, load_sharelora, merge, merge_and_unload, save_sharelora, spec_of, unmerge
from .sharing import SPEC_FILE, SharingSpec, build_spec, is_tied, retie, shared_parameters, tie, type_key

__all__ = [
    "ALL_LINEAR", "SHARED_MATRICES", "SPEC_FILE", "TARGET_ALIASES", "VARIANTS", "ShareLoraConfig", "SharingSpec",
    "apply_sharelora", "build_spec", "count_trainable", "expected_params", "is_tied", "load_sharelora", "merge",
    "merge_and_unload", "optimizer_state_bytes", "projection_dims", "resolve_targets", "retie", "save_sharelora",
    "shared_parameters", "spec_of", "tie", "type_key", "unmerge",
]
