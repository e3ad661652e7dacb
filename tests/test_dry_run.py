"""`make stream-llama2 DRY_RUN=1`: Llama-2-7B on the meta device, counts against the closed form, no weights."""

from __future__ import annotations

from clsharelora.cli import main
from clsharelora.dry_run import activation_bytes
from clsharelora.models import configs
from clsharelora.paths import PROJECT_ROOT


def test_llama2_dry_run_prints_counts_plan_and_stream(capsys):
    code = main(["compare", "--config", str(PROJECT_ROOT / "configs" / "llama2-7b.yaml"),
                 "--strategies", "lora,sharelora", "--out", "runs/never-written", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "trainable parameters:  159,907,840  (closed form 159,907,840: OK)" in out
    assert "trainable parameters:  89,309,184  (closed form 89,309,184: OK)" in out
    assert "44.1% fewer" in out and "base weights (bfloat16):    12.55 GiB" in out
    assert "4. mmlu_pro: train mmlu_pro/validation" in out
    assert not (PROJECT_ROOT / "runs" / "never-written").exists()


def test_activation_estimate_is_korthikanti_formula():
    c = configs.llama2_7b()
    s, b, h, a, L = 1024, 4, c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    assert activation_bytes(c, batch=b, seq=s) == int(L * s * b * h * (34 + 5 * a * s / h))
