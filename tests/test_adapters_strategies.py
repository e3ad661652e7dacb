"""The lora / sharelora / vera adapters through the plug-in registry, as a config would create them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from clsharelora import registry
from clsharelora.adapters import count_trainable, is_tied
from clsharelora.adapters.base import AdapterStrategy
from clsharelora.errors import ConfigError
from clsharelora.models import configs, meta_model

VOCAB = 256


def base(seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(configs.tiny_llama(vocab_size=VOCAB)).eval()


def logits(model, seed=0):
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapters_are_registered():
    assert {"lora", "sharelora", "vera"} <= set(registry.known("adapter"))
    for name in ("lora", "sharelora", "vera"):
        assert issubclass(registry.get(name, "adapter"), AdapterStrategy)


def test_defaults_documented_values():
    s = registry.create("sharelora", "adapter")
    assert s.options == {"r": 8, "alpha": 16, "dropout": 0.05, "targets": "all-linear", "rslora": False,
                         "dropout_masks": "per_module", "variant": "share_a"}


@pytest.mark.parametrize("name,options", [
    ("lora", {"r": 4, "targets": "q,v"}),
    ("sharelora", {"r": 4, "variant": "share_a"}),
    ("sharelora", {"r": 4, "variant": "share_b", "targets": ["q_proj", "k_proj", "down"]}),
    ("sharelora", {"r": 4, "variant": "share_ab", "rslora": True}),
    ("vera", {"r": 8}),
    ("vera", {"r": 8, "targets": "q,v"}),
])
def test_apply_counts_match_closed_form_and_save_load_round_trips(tmp_path, name, options):
    strategy = registry.create(name, "adapter", **options)
    model = strategy.apply(base())
    assert count_trainable(model) == strategy.expected_params(configs.tiny_llama(VOCAB))
    assert all(("lora_" in n or "vera_lambda" in n) for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():  # move off the identity init so the round trip is a real check
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    before = logits(model)
    strategy.save(model, tmp_path)
    loaded = strategy.load(base(), tmp_path)
    assert torch.equal(logits(loaded), before)
    assert count_trainable(loaded) == count_trainable(model)
    if name == "sharelora":
        assert is_tied(loaded)


def test_expected_params_on_meta_llama2_7b():
    s = registry.create("sharelora", "adapter", r=64)
    model = s.apply(meta_model("llama2-7b"))
    assert count_trainable(model) == s.expected_params(configs.llama2_7b()) == 89_309_184
    vera = registry.create("vera", "adapter", r=256, targets="q,v")
    # per layer: q -> 256 + 4096, v -> 256 + 4096
    assert vera.expected_params(configs.llama2_7b()) == 32 * 2 * (256 + 4096)


@pytest.mark.parametrize("name,options,field", [
    ("lora", {"r": 0}, "'r'"),
    ("sharelora", {"variant": "lora"}, "'variant'"),
    ("sharelora", {"variant": "share_x"}, "'variant'"),
    ("sharelora", {"targets": "re:["}, "'targets'"),
    ("sharelora", {"rank": 8}, "'rank'"),
    ("vera", {"alpha": 16}, "'alpha'"),
    ("vera", {"d_initial": "big"}, "'d_initial'"),
])
def test_bad_options_raise_config_error(name, options, field):
    with pytest.raises(ConfigError, match=field):
        registry.create(name, "adapter", **options)


def test_targets_matching_nothing_fail_at_apply():
    with pytest.raises(ConfigError, match="'targets'"):
        registry.create("lora", "adapter", targets="c_attn").apply(base())
