"""Save -> load -> same logits, same trainable count, still tied; retie after a bare peft load; merge."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from clsharelora.adapters import (
    SPEC_FILE, ShareLoraConfig, apply_sharelora, count_trainable, expected_params, is_tied, load_sharelora,
    merge, merge_and_unload, retie, save_sharelora, unmerge,
)
from clsharelora.errors import ConfigError, DataError
from clsharelora.models import configs

VOCAB = 256


def base(seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(configs.tiny_llama(vocab_size=VOCAB)).eval()


def trained(variant: str, seed: int, targets="all-linear"):
    """A ShareLoRA model after a few Adam steps on random tokens (non-trivial, still tied, B non-zero)."""
    model = apply_sharelora(base(), ShareLoraConfig(variant=variant, r=4, dropout=0.0, targets=targets))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (2, 9), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def logits(model, seed: int):
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("variant", ["share_a", "share_b", "share_ab"])
def test_save_load_round_trip(tmp_path, variant):
    seed = torch.seed() % 2**31
    model = trained(variant, seed)
    before, n = logits(model, seed), count_trainable(model)
    save_sharelora(model, tmp_path)
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    assert spec["variant"] == variant and len(spec["groups"]) == 7
    # peft's file holds a copy per layer (it clones aliased tensors for safetensors)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert len(saved) == 2 * 7 * 2
    loaded = load_sharelora(base(), tmp_path)
    assert is_tied(loaded)
    assert count_trainable(loaded) == n == expected_params(configs.tiny_llama(VOCAB), variant, 4, "all-linear")
    assert torch.equal(logits(loaded, seed), before)
    frozen = load_sharelora(base(), tmp_path, is_trainable=False)
    assert count_trainable(frozen) == 0 and is_tied(frozen)


def test_bare_peft_load_is_untied_until_retie(tmp_path):
    model = trained("share_a", 3)
    before = logits(model, 1)
    save_sharelora(model, tmp_path)
    loaded = PeftModel.from_pretrained(base(), str(tmp_path), is_trainable=True)
    lora_count = expected_params(configs.tiny_llama(VOCAB), "lora", 4, "all-linear")
    assert count_trainable(loaded) == lora_count  # peft alone: per-layer copies, as many params as LoRA
    retie(loaded, tmp_path)
    assert is_tied(loaded)
    assert count_trainable(loaded) == count_trainable(model) < lora_count
    assert torch.equal(logits(loaded, 1), before)
    retie(loaded)  # the spec is now remembered on the model; idempotent
    assert is_tied(loaded)


def test_retie_refuses_copies_that_differ(tmp_path):
    save_sharelora(trained("share_a", 4), tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if "layers.1.self_attn.q_proj.lora_A" in k)
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(DataError, match="q_proj"):
        load_sharelora(base(), tmp_path)


def test_missing_or_corrupt_spec_is_a_clear_error(tmp_path):
    save_sharelora(trained("share_a", 5), tmp_path)
    loaded = PeftModel.from_pretrained(base(), str(tmp_path))
    with pytest.raises(ConfigError, match="retie"):
        retie(loaded)
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(DataError, match=SPEC_FILE):
        retie(loaded, tmp_path)
    (tmp_path / SPEC_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not a ShareLoRA"):
        retie(loaded, tmp_path)
    (tmp_path / SPEC_FILE).unlink()
    with pytest.raises(ConfigError, match=SPEC_FILE):
        load_sharelora(base(), tmp_path)


@pytest.mark.parametrize("variant", ["lora", "share_a", "share_ab"])
def test_merge_unmerge_and_unload_keep_outputs(variant):
    model = trained(variant, 7)
    before = logits(model, 2)
    w0 = model.get_base_model().model.layers[1].mlp.down_proj.base_layer.weight.detach().clone()
    merge(model)
    assert not torch.equal(model.get_base_model().model.layers[1].mlp.down_proj.base_layer.weight, w0)
    torch.testing.assert_close(logits(model, 2), before, rtol=1e-5, atol=1e-5)
    unmerge(model)
    torch.testing.assert_close(model.get_base_model().model.layers[1].mlp.down_proj.base_layer.weight, w0,
                               rtol=0, atol=1e-6)
    assert is_tied(model)
    torch.testing.assert_close(logits(model, 2), before, rtol=1e-5, atol=1e-5)
    plain = merge_and_unload(model)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(logits(plain, 2), before, rtol=1e-5, atol=1e-5)
