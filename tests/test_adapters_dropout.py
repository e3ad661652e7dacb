"""Option dropout_masks=per_input (issue #28): one dropout mask per distinct input tensor, q/k/v and gate/up
sharing it, each projection still seeing Bernoulli(1 - p) masks scaled by 1 / (1 - p)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from clsharelora import registry
from clsharelora.adapters import ShareLoraConfig, apply_sharelora
from clsharelora.adapters.dropout import InputDropout
from clsharelora.errors import ConfigError
from clsharelora.models import configs

P = 0.3
VOCAB = 256


def model(masks: str, variant: str = "share_a", seed: int = 0):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(configs.tiny_llama(vocab_size=VOCAB))
    m = apply_sharelora(base, ShareLoraConfig(variant=variant, r=4, dropout=P, dropout_masks=masks))
    m.train()
    return m


def batch(seed: int = 1):
    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def seen_masks(m) -> list[dict[str, torch.Tensor]]:
    """Per forward: projection name -> the mask its lora_A saw (lora_A's input / the layer's input)."""
    steps: list[dict[str, torch.Tensor]] = []
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in m.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            short = ".".join(name.split(".")[-3:])  # e.g. 0.self_attn.q_proj
            handles.append(mod.register_forward_pre_hook(lambda _m, a, n=short: inputs.__setitem__(n, a[0])))
            handles.append(mod.lora_A["default"].register_forward_pre_hook(
                lambda _m, a, n=short: steps[-1].__setitem__(n, (a[0] / inputs[n]).detach())))
    for seed in (1, 2):
        steps.append({})
        m(**batch(seed)).loss.backward()
    for h in handles:
        h.remove()
    return steps


@pytest.fixture(scope="module")
def per_input_steps():
    return seen_masks(model("per_input"))


def test_each_projection_sees_bernoulli_masks_scaled_by_one_over_keep(per_input_steps):
    for step in per_input_steps:
        assert len(step) == 2 * 7
        for name, mask in step.items():
            kept = mask[mask != 0]
            torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - P)), msg=name)
            n = mask.numel()
            dropped = float((mask == 0).float().mean())
            assert abs(dropped - P) < 5 * math.sqrt(P * (1 - P) / n), (name, dropped)


def test_projections_reading_one_input_share_its_mask_within_a_step(per_input_steps):
    for step in per_input_steps:
        for layer in ("0", "1"):
            q = step[f"{layer}.self_attn.q_proj"]
            assert torch.equal(q, step[f"{layer}.self_attn.k_proj"])
            assert torch.equal(q, step[f"{layer}.self_attn.v_proj"])
            assert torch.equal(step[f"{layer}.mlp.gate_proj"], step[f"{layer}.mlp.up_proj"])
        assert not torch.equal(step["0.self_attn.q_proj"], step["1.self_attn.q_proj"])  # a new input, new mask


def test_different_steps_draw_different_masks(per_input_steps):
    first, second = per_input_steps
    for name in first:
        assert not torch.equal(first[name], second[name]), name


def test_default_keeps_peft_per_module_masks():
    m = model("per_module")
    assert not any(isinstance(x, InputDropout) for x in m.modules())
    step = seen_masks(m)[0]
    assert not torch.equal(step["0.self_attn.q_proj"], step["0.self_attn.k_proj"])


def test_gradient_checkpointing_recomputes_the_same_masks():
    grads = []
    for checkpointing in (False, True):
        m = model("per_input", variant="lora")
        with torch.no_grad():  # B starts at zero: give it values so A's gradient depends on the masks
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
        if checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(7)
        m(**batch()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_eval_mode_applies_no_dropout():
    m = model("per_input")
    m.eval()
    out = seen_masks(m)
    assert all(torch.all(mask == 1) for step in out for mask in step.values())


def test_option_is_validated_and_declared_once():
    with pytest.raises(ConfigError, match="dropout_masks.*per_module, per_input.*'per_layer'"):
        registry.create("lora", "adapter", dropout_masks="per_layer")
    with pytest.raises(ConfigError, match="dropout_masks"):
        ShareLoraConfig(dropout_masks="shared")
    for name in ("lora", "sharelora"):
        assert registry.create(name, "adapter").options["dropout_masks"] == "per_module"
