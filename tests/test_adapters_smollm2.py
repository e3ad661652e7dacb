"""On the real SmolLM2-135M: LoRA vs ShareA trainable parameters and Adam state bytes after one step."""

from __future__ import annotations

import pytest
import torch

from clsharelora.adapters import (
    ShareLoraConfig, apply_sharelora, count_trainable, expected_params, is_tied, optimizer_state_bytes,
)
from clsharelora.models import configs, load_model, load_tokenizer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("targets", ["all-linear", "q,v"])
def test_lora_vs_share_a_params_and_adam_state(targets, capsys):
    r = 64
    tokenizer = load_tokenizer("smollm2-135m")
    batch = tokenizer(["Natalia sold clips to 48 of her friends in April.", "def add(a, b): return a + b"],
                      return_tensors="pt", padding=True)
    report = {}
    for variant in ("lora", "share_a"):
        model = apply_sharelora(load_model("smollm2-135m"), ShareLoraConfig(variant=variant, r=r, targets=targets))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-4)
        out = model(**batch, labels=batch["input_ids"])
        assert torch.isfinite(out.loss)
        out.loss.backward()
        opt.step()
        n = count_trainable(model)
        assert n == expected_params(configs.smollm2_135m(), variant, r, targets)
        # Adam keeps exp_avg + exp_avg_sq (fp32) per element, and a 4-byte scalar step per tensor
        state = optimizer_state_bytes(opt)
        assert state == 2 * 4 * n + 4 * len(params)
        if variant == "share_a":
            assert is_tied(model)
        report[variant] = (n, state, len(params))
    with capsys.disabled():
        for variant, (n, state, tensors) in report.items():
            print(f"\nSmolLM2-135M {targets} r={r} {variant:8s}: trainable {n:>11,}  "
                  f"tensors {tensors:>4}  Adam state {state / 2**20:8.2f} MiB")
        print(f"ShareA/LoRA trainable ratio: {report['share_a'][0] / report['lora'][0]:.3f}")
    assert report["share_a"][0] < report["lora"][0] and report["share_a"][1] < report["lora"][1]
