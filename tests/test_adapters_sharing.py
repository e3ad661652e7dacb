"""Tying on a real (tiny, random-init GQA Llama) model: one tensor per group, gradients sum, steps stay tied."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from clsharelora.adapters import (
    ShareLoraConfig, apply_sharelora, count_trainable, expected_params, is_tied, resolve_targets,
    shared_parameters, spec_of, type_key,
)
from clsharelora.errors import ConfigError
from clsharelora.models import configs

VOCAB = 256


def base(seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(configs.tiny_llama(vocab_size=VOCAB))


def randomize_adapter(model, seed: int) -> None:
    """B starts at zero in LoRA (so grad of A would be zero); give every adapter tensor random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def untied_copy(model, variant_config: ShareLoraConfig):
    """Plain LoRA with the same base weights, every layer holding its own copy of the shared values."""
    ref = apply_sharelora(base(), ShareLoraConfig(variant="lora", r=variant_config.r, alpha=variant_config.alpha,
                                                  dropout=0.0, targets=variant_config.targets))
    ref.load_state_dict(model.state_dict(), strict=True)  # state_dict lists every member: copies, untied
    assert not is_tied_lora_a(ref)
    return ref


def is_tied_lora_a(model) -> bool:
    layers = model.get_base_model().model.layers
    return layers[0].self_attn.q_proj.lora_A["default"].weight is layers[1].self_attn.q_proj.lora_A["default"].weight


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 11), generator=g)
    return ids


def loss_of(model, ids):
    return model(input_ids=ids, labels=ids).loss


def test_type_key_strips_only_the_layer_index():
    assert type_key("model.layers.17.self_attn.q_proj") == "model.layers.*.self_attn.q_proj"
    assert type_key("transformer.h.3.mlp.c_proj") != type_key("transformer.h.3.attn.c_proj")
    assert type_key("lm_head") == "lm_head"


@pytest.mark.parametrize("variant", ["share_a", "share_b", "share_ab"])
def test_groups_are_per_projection_type_and_one_parameter_each(variant):
    model = apply_sharelora(base(), ShareLoraConfig(variant=variant, r=4, dropout=0.0))
    spec = spec_of(model)
    assert sorted(k.rsplit(".", 1)[-1] for k in spec.groups) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert all(len(m) == 2 for m in spec.groups.values())
    assert is_tied(model)
    for (key, matrix), params in shared_parameters(model, spec).items():
        assert len({p.data_ptr() for p in params}) == 1
    # GQA: k/v output 2 heads x 16 = 32, q output 4 x 16 = 64; each type keeps its own shape
    if "lora_B" in spec.shared:
        shapes = {k.rsplit(".", 1)[-1]: tuple(ps[0].shape) for (k, m), ps in shared_parameters(model, spec).items()
                  if m == "lora_B"}
        assert shapes["q_proj"] == (64, 4) and shapes["k_proj"] == (32, 4) and shapes["v_proj"] == (32, 4)
    # measured = closed form on the tiny config too
    assert count_trainable(model) == expected_params(configs.tiny_llama(VOCAB), variant, 4, "all-linear")


def test_parameters_and_named_parameters_dedup_shared_tensors():
    model = apply_sharelora(base(), ShareLoraConfig(variant="share_a", r=4, dropout=0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    all_named = [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    assert len(trainable) == len({id(p) for p in trainable}) == len(named)
    # 7 types x 2 layers x (A, B) untied = 28 entries; share_a drops one A per type = 21
    assert len(all_named) == 28 and len(named) == 21
    assert model.get_nb_trainable_parameters()[0] == count_trainable(model)  # peft's own count agrees
    assert all(".layers.1." not in n for n in named if "lora_A" in n)  # owner is layer 0
    assert len(model.state_dict()) >= 28  # state_dict keeps every member's key (same storage)


@pytest.mark.parametrize("variant", ["share_a", "share_b", "share_ab"])
def test_shared_gradient_is_sum_of_untied_per_layer_gradients(variant):
    config = ShareLoraConfig(variant=variant, r=4, alpha=8, dropout=0.0)
    model = apply_sharelora(base(), config)
    randomize_adapter(model, seed=torch.seed() % 2**31)
    ref = untied_copy(model, config)
    ids = batch(seed=torch.seed() % 2**31)
    loss_of(model, ids).backward()
    loss_of(ref, ids).backward()
    spec = spec_of(model)
    ref_params = dict(ref.named_parameters())
    checked = 0
    for key, members in spec.groups.items():
        for matrix in spec.shared:
            shared = shared_parameters(model, spec)[(key, matrix)][0]
            per_layer = [ref_params[f"base_model.model.{n}.{matrix}.default.weight"].grad for n in members]
            assert not torch.equal(per_layer[0], per_layer[1])  # layers contribute different gradients
            torch.testing.assert_close(shared.grad, sum(per_layer), rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked == 7 * len(spec.shared)


def test_after_sgd_and_adam_steps_members_stay_one_tensor_with_expected_values():
    config = ShareLoraConfig(variant="share_a", r=4, dropout=0.0)
    model = apply_sharelora(base(), config)
    randomize_adapter(model, seed=11)
    ref = untied_copy(model, config)
    ids = batch(seed=5)
    spec = spec_of(model)
    before = {k: ps[0].detach().clone() for k, ps in shared_parameters(model, spec).items()}
    lr = 0.1
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    assert sum(len(g["params"]) for g in opt.param_groups) == 21
    loss_of(model, ids).backward()
    loss_of(ref, ids).backward()
    opt.step()
    ref_params = dict(ref.named_parameters())
    for (key, matrix), params in shared_parameters(model, spec).items():
        assert len({p.data_ptr() for p in params}) == 1 and all(p is params[0] for p in params)
        for p in params[1:]:
            assert torch.equal(p, params[0])
        summed = sum(ref_params[f"base_model.model.{n}.{matrix}.default.weight"].grad for n in spec.groups[key])
        torch.testing.assert_close(params[0].detach(), before[(key, matrix)] - lr * summed, rtol=1e-4, atol=1e-6)
    adam = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.zero_grad()
    loss_of(model, ids).backward()
    adam.step()
    assert is_tied(model)
    assert len(adam.state) == 21


def test_tying_survives_dtype_and_device_moves():
    model = apply_sharelora(base(), ShareLoraConfig(variant="share_ab", r=4))
    model.to(torch.float64)
    assert is_tied(model)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_rslora_scaling_and_hyperparameters_reach_peft():
    model = apply_sharelora(base(), ShareLoraConfig(variant="share_a", r=16, alpha=8, rslora=True, dropout=0.1))
    layer = model.get_base_model().model.layers[1].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 16 ** 0.5)
    assert layer.lora_dropout["default"].p == pytest.approx(0.1)
    plain = apply_sharelora(base(), ShareLoraConfig(variant="lora", r=16, alpha=8))
    assert plain.get_base_model().model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(0.5)


def test_target_forms_resolve_to_expected_modules():
    m = base()
    qv = resolve_targets(m, "q,v")
    assert qv == resolve_targets(m, ["q_proj", "v_proj"]) == resolve_targets(m, "re:.*\\.(q|v)_proj")
    assert [n.rsplit(".", 1)[-1] for n in qv] == ["q_proj", "v_proj"] * 2
    assert len(resolve_targets(m, "all-linear")) == 14 and "lm_head" not in resolve_targets(m, "all-linear")
    model = apply_sharelora(m, ShareLoraConfig(variant="share_a", r=2, targets="re:model\\.layers\\.1\\..*"))
    assert all(len(members) == 1 for members in spec_of(model).groups.values())  # one layer: nothing to share


@pytest.mark.parametrize("kwargs,field", [
    ({"r": 0}, "'r'"), ({"r": -3}, "'r'"), ({"r": 2.5}, "'r'"), ({"variant": "share_c"}, "'variant'"),
    ({"alpha": 0}, "'alpha'"), ({"dropout": 1.0}, "'dropout'"), ({"rslora": "yes"}, "'rslora'"),
    ({"targets": "re:("}, "'targets'"), ({"targets": "q,,v"}, "'targets'"), ({"targets": 3}, "'targets'"),
])
def test_bad_config_values_raise_config_error_naming_the_option(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ShareLoraConfig(**kwargs)


@pytest.mark.parametrize("targets", ["q,qq_proj", "re:nothing.*", ["gate", "c_attn"]])
def test_targets_matching_nothing_raise(targets):
    with pytest.raises(ConfigError, match="'targets'"):
        apply_sharelora(base(), ShareLoraConfig(targets=targets))
