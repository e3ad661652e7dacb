"""Closed-form trainable-parameter counts vs counts measured on meta-device models (no weights allocated)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from clsharelora.adapters import ShareLoraConfig, apply_sharelora, count_trainable, expected_params, is_tied
from clsharelora.errors import ConfigError
from clsharelora.models import configs, meta_model

VARIANTS = ("lora", "share_a", "share_b", "share_ab")


def _meta(arch: str):
    if arch in ("gpt2-medium", "roberta-base"):
        config = configs.architecture(arch)
        if arch == "roberta-base":
            config.is_decoder = True
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    return meta_model(arch)


def _measured(arch: str, variant: str, r: int, targets) -> int:
    model = apply_sharelora(_meta(arch), ShareLoraConfig(variant=variant, r=r, targets=targets),
                            low_cpu_mem_usage=True)
    assert is_tied(model)
    assert all(p.device.type == "meta" for p in model.parameters())
    return count_trainable(model)


# (d_in, d_out) per projection, written out by hand from the published architectures (independent of code)
LLAMA2_7B = {"q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
             "gate": (4096, 11008), "up": (4096, 11008), "down": (11008, 4096)}
LLAMA2_13B = {"q": (5120, 5120), "k": (5120, 5120), "v": (5120, 5120), "o": (5120, 5120),
              "gate": (5120, 13824), "up": (5120, 13824), "down": (13824, 5120)}
LLAMA3_8B = {"q": (4096, 4096), "k": (4096, 1024), "v": (4096, 1024), "o": (4096, 4096),
             "gate": (4096, 14336), "up": (4096, 14336), "down": (14336, 4096)}
SMOLLM2 = {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576),
           "gate": (576, 1536), "up": (576, 1536), "down": (1536, 576)}
GPT2_M = {"c_attn": (1024, 3072), "attn.c_proj": (1024, 1024), "c_fc": (1024, 4096), "mlp.c_proj": (4096, 1024)}
ROBERTA = {"q": (768, 768), "k": (768, 768), "v": (768, 768), "o": (768, 768), "up": (768, 3072),
           "down": (3072, 768)}


def hand_formula(dims: dict, layers: int, r: int, variant: str) -> int:
    a_copies = 1 if variant in ("share_a", "share_ab") else layers
    b_copies = 1 if variant in ("share_b", "share_ab") else layers
    return sum(a_copies * r * d_in + b_copies * r * d_out for d_in, d_out in dims.values())


def test_llama2_7b_all_linear_r64_matches_paper_numbers():
    lora = _measured("llama2-7b", "lora", 64, "all-linear")
    assert lora == 159_907_840 == expected_params(configs.llama2_7b(), "lora", 64, "all-linear")
    share_a = _measured("llama2-7b", "share_a", 64, "all-linear")
    r, L = 64, 32
    closed = sum(r * d_in for d_in, _ in LLAMA2_7B.values()) + L * sum(r * d_out for _, d_out in LLAMA2_7B.values())
    assert share_a == closed == expected_params(configs.llama2_7b(), "share_a", 64, "all-linear") == 89_309_184


CASES = [
    ("llama2-7b", configs.llama2_7b, "all-linear", LLAMA2_7B, 32),
    ("llama2-7b", configs.llama2_7b, "q,v", {k: LLAMA2_7B[k] for k in "qv"}, 32),
    ("llama2-13b", configs.llama2_13b, "all-linear", LLAMA2_13B, 40),
    ("llama3-8b", configs.llama3_8b, "q,v", {k: LLAMA3_8B[k] for k in "qv"}, 32),
    ("llama3-8b", configs.llama3_8b, "all-linear", LLAMA3_8B, 32),
    ("smollm2-135m", configs.smollm2_135m, "all-linear", SMOLLM2, 30),
    ("smollm2-135m", configs.smollm2_135m, "q,v", {k: SMOLLM2[k] for k in "qv"}, 30),
    # GPT-2 fuses q,k,v into one Conv1D c_attn: "q,v" adapts c_attn as a whole
    ("gpt2-medium", configs.gpt2_medium, "q,v", {"c_attn": GPT2_M["c_attn"]}, 24),
    ("gpt2-medium", configs.gpt2_medium, "all-linear", GPT2_M, 24),
    ("roberta-base", configs.roberta_base, "q,v", {k: ROBERTA[k] for k in "qv"}, 12),
    ("roberta-base", configs.roberta_base, "all-linear", ROBERTA, 12),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch,config_fn,targets,dims,layers", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_closed_form_equals_measured_on_meta(arch, config_fn, targets, dims, layers, variant):
    r = 64
    measured = _measured(arch, variant, r, targets)
    assert measured == expected_params(config_fn(), variant, r, targets) == hand_formula(dims, layers, r, variant)


def test_llama3_8b_qv_r64_literal_values():
    # q: 32·64·(4096+4096); v: 32·64·(4096+1024) -- GQA makes v narrower than q
    assert expected_params(configs.llama3_8b(), "lora", 64, "q,v") == 27_262_976
    assert expected_params(configs.llama3_8b(), "share_a", 64, "q,v") == 64 * 8192 + 32 * 64 * 5120


def test_closed_form_rejects_regex_and_unknown_projection():
    with pytest.raises(ConfigError, match="targets"):
        expected_params(configs.llama2_7b(), "lora", 8, "re:.*q_proj")
    with pytest.raises(ConfigError, match="gate"):
        expected_params(configs.gpt2_medium(), "lora", 8, "q,gate")
    with pytest.raises(ConfigError, match="variant"):
        expected_params(configs.llama2_7b(), "share_q", 8, "q,v")
    with pytest.raises(ConfigError, match="'r'"):
        expected_params(configs.llama2_7b(), "lora", 0, "q,v")


@pytest.mark.parametrize("arch,config_fn,targets", [
    ("llama3-8b", configs.llama3_8b, ["q_proj", "self_attn.k_proj", "down"]),
    ("gpt2-medium", configs.gpt2_medium, ["c_proj"]),  # suffix: both attn.c_proj and mlp.c_proj
    ("roberta-base", configs.roberta_base, ["query", "output.dense"]),  # attention.output.dense too
])
def test_closed_form_accepts_module_suffixes_like_resolution(arch, config_fn, targets):
    assert _measured(arch, "share_a", 8, targets) == expected_params(config_fn(), "share_a", 8, targets)


def hand_lora_rank_nearest(dims: dict, layers: int, r: int, variant: str) -> tuple[int, int]:
    """Brute force, independent of the code: every LoRA rank up to r, the one with the count nearest the
    ShareLoRA count (ties: the smaller rank)."""
    target = hand_formula(dims, layers, r, variant)
    rank = min(range(1, r + 1), key=lambda k: (abs(hand_formula(dims, layers, k, "lora") - target), k))
    return rank, hand_formula(dims, layers, rank, "lora") - target


@pytest.mark.parametrize("arch, config_fn, dims, layers, r", [
    ("llama2-7b", configs.llama2_7b, LLAMA2_7B, 32, 64),
    ("llama2-13b", configs.llama2_13b, LLAMA2_13B, 40, 64),
    ("smollm2-135m", configs.smollm2_135m, SMOLLM2, 30, 8),
    ("smollm2-135m", configs.smollm2_135m, SMOLLM2, 30, 64),
])
@pytest.mark.parametrize("targets", ["all-linear", "q,v", "q,k,v,o"])
@pytest.mark.parametrize("variant", ["share_a", "share_b", "share_ab"])
def test_matched_lora_rank_is_nearest_to_the_sharelora_count(arch, config_fn, dims, layers, r, targets, variant):
    from clsharelora.adapters.counting import matched_lora_rank

    picked = {k: v for k, v in dims.items() if targets == "all-linear" or k in targets.split(",")}
    rank, residual = hand_lora_rank_nearest(picked, layers, r, variant)
    got = matched_lora_rank(config_fn(), variant, r, targets)
    assert (got["rank"], got["residual"]) == (rank, residual)
    assert got["target_params"] == hand_formula(picked, layers, r, variant)
    assert got["lora_params"] == hand_formula(picked, layers, rank, "lora")


def test_matched_lora_literal_values_and_the_adapter_uses_that_rank():
    """Llama-2-7B r=64: all-linear share_a -> rank 36 (+638,976 = +0.72%); the authors' q,v share_a -> rank 33
    exactly; SmolLM2 r=8 share_ab -> rank 1, which still has 3.75x the parameters (LoRA cannot go lower)."""
    from clsharelora import registry

    lora = registry.create("lora", "adapter", r=64, match="share_a")
    assert lora.matched(configs.llama2_7b()) == {
        "match": "share_a", "share_r": 64, "rank": 36, "target_params": 89_309_184, "lora_params": 89_948_160,
        "residual": 638_976}
    assert lora.expected_params(configs.llama2_7b()) == 89_948_160 == count_trainable(lora.apply(_meta("llama2-7b")))
    qv = registry.create("lora", "adapter", r=64, targets="q,v", match="share_a").matched(configs.llama2_7b())
    assert (qv["rank"], qv["residual"]) == (33, 0)
    ab = registry.create("lora", "adapter", r=8, match="share_ab").matched(configs.smollm2_135m())
    assert (ab["rank"], ab["lora_params"], ab["target_params"]) == (1, 305_280, 81_408)


@pytest.mark.parametrize("options, fragment", [
    ({"match": "share_c"}, "option 'match' must be one of share_a, share_b, share_ab"),
    ({"match": "share_a", "targets": "re:.*q_proj"}, "not the regex"),
])
def test_matched_lora_rejects_bad_options(options, fragment):
    from clsharelora import registry

    with pytest.raises(ConfigError, match=fragment):
        registry.create("lora", "adapter", **options)
