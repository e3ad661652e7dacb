"""Run config: YAML parsing, overrides, unknown keys with suggestions, impossible values."""

from __future__ import annotations

import pytest

from clsharelora import config as cfg
from clsharelora.errors import ConfigError


def test_defaults_validate_and_roundtrip(tmp_path):
    c = cfg.from_dict({})
    assert c.model == "smollm2-135m" and c.adapter == {"name": "sharelora"}
    path = tmp_path / "c.yaml"
    cfg.dump_yaml(c, path)
    assert cfg.from_dict(cfg.load_yaml(path)) == c


def test_overrides_are_typed_and_nested():
    data: dict = {}
    for assignment in ("adapter.r=64", "lora.alpha=32", "train.lr=1e-4", "train.bf16=true", "seed=3",
                       "train.max_steps=null"):
        cfg.apply_override(data, assignment)
    c = cfg.from_dict({**data, "adapter": {"name": "lora", **data["adapter"]}})
    assert c.adapter == {"name": "lora", "r": 64, "alpha": 32}
    assert c.train.lr == 1e-4 and c.train.bf16 is True and c.seed == 3 and c.train.max_steps is None


@pytest.mark.parametrize("data, fragment", [
    ({"trian": {}}, "did you mean 'train'"),
    ({"train": {"lr_rate": 1}}, "did you mean 'lr'"),
    ({"train": {"lr": 0}}, "train.lr must be > 0"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be >= 1"),
    ({"train": {"batch_size": "four"}}, "train.batch_size must be int"),
    ({"train": {"bf16": "yes"}}, "train.bf16 must be true or false"),
    ({"train": {"schedule": "cosin"}}, "did you mean 'cosine'"),
    ({"train": {"warmup_ratio": 1.5}}, "warmup_ratio"),
    ({"dtype": "float8"}, "dtype must be"),
    ({"adapter": 8}, "adapter must be a strategy name or a mapping"),
])
def test_bad_values_name_the_field(data, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        cfg.from_dict(data)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: x\ntrain:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        cfg.load_yaml(path)


def test_adapter_block_without_name_keeps_the_default_adapter():
    assert cfg.from_dict({"adapter": {"r": 64}}).adapter == {"name": "sharelora", "r": 64}
    assert cfg.from_dict({"cl": "replay"}).cl == {"name": "replay"}


def test_override_needs_key_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        cfg.apply_override({}, "adapter.r")
