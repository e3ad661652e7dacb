"""`make stream-llama2 DRY_RUN=1`: Llama-2-7B on the meta device, counts against the closed form, no weights."""

from __future__ import annotations

import pytest

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


def test_dry_run_prints_batching_steps_and_the_matched_lora(capsys, monkeypatch):
    """Global batch 16 on 4 processes of batch 2: accumulation 2; steps = ceil(examples / 16) x epochs,
    whatever the processes (MMLU-Pro: 70 validation items x 3 epochs -> 5 x 3 = 15)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    code = main(["run", "--config", str(PROJECT_ROOT / "configs" / "llama2-7b.yaml"), "--strategy", "lora",
                 "--set", "adapter.match=share_a", "--out", "runs/never-written", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "global batch 16 = per-process batch 2 x 4 process(es) x 2 accumulation" in out
    assert "accumulation on other process counts: 1: 8, 2: 4, 8: 1" in out
    assert "engine: PyTorch DDP" in out and "no_sync on 1 of 2 micro-steps" in out
    assert "(epochs=3; 70 examples, 15 steps)" in out and "(all; 7473 examples, 468 steps)" in out
    assert "matched to sharelora share_a r=64: LoRA rank 36, 89,948,160 vs 89,309,184 (residual +638,976, +0.72%)" \
        in out and "trainable parameters:  89,948,160  (closed form 89,948,160: OK)" in out


def test_dry_run_rejects_a_global_batch_the_processes_cannot_split(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    code = main(["run", "--config", str(PROJECT_ROOT / "configs" / "llama2-7b.yaml"), "--set", "train.batch_size=4",
                 "--out", "runs/never-written", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: train.global_batch=16 is not divisible by train.batch_size x processes = 4 x 8 = 32" in err


def test_activation_estimate_is_korthikanti_formula():
    c = configs.llama2_7b()
    s, b, h, a, L = 1024, 4, c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    assert activation_bytes(c, batch=b, seq=s) == int(L * s * b * h * (34 + 5 * a * s / h))


def test_dry_run_shows_what_the_length_policy_drops(capsys, tmp_path):
    """With a tokenizer on this machine the dry run counts the drops a run would make (the same counts as
    results.json `training_data`); with a hub model it says how to get them instead of downloading."""
    from clsharelora.benchmarks.scenario import encode_records, length_counts, training_records
    from clsharelora.benchmarks.stream import load_stream
    from clsharelora.models import load_tokenizer

    stream = tmp_path / "s.yaml"
    stream.write_text("name: s\nexperiences:\n  - name: gsm8k\n    train: {benchmark: gsm8k, split: train, n: 40, "
                      "max_length: 160}\n    eval: {task: gsm8k, n: 2}\n")
    assert main(["run", "--stream", str(stream), "--model", "tiny-llama", "--strategy", "lora", "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = load_stream(stream).experiences[0]
    expected = length_counts(encode_records(spec, training_records(spec, seed=0), load_tokenizer("tiny-llama"),
                                            progress=False), experience="gsm8k", max_length=160)
    assert 0 < expected.dropped_too_long < 40
    assert f"  {expected.summary()}" in out
    assert main(["run", "--config", str(PROJECT_ROOT / "configs" / "llama2-7b.yaml"), "--dry-run"]) == 0
    assert "needs the tokenizer of meta-llama/Llama-2-7b-hf, which a dry run does not download" in capsys.readouterr().out


def test_memory_plan_compares_ddp_and_fsdp_per_gpu(capsys):
    """DDP keeps the whole base on every GPU; FSDP2 holds 1/N of it plus two gathered layers: equal at N=1,
    smaller from N=2 on, and never below the part that is not sharded (adapter, activations, logits)."""
    import re

    assert main(["run", "--config", str(PROJECT_ROOT / "configs" / "llama2-7b.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[out.splitlines().index(next(x for x in out.splitlines() if x.startswith("per-GPU GiB"))) + 1]
    plan = {int(n): (float(d), float(f)) for n, d, f in re.findall(r"(\d+): DDP ([\d.]+) / FSDP ([\d.]+)", line)}
    assert sorted(plan) == [1, 2, 4, 8, 16]
    assert len({d for d, _ in plan.values()}) == 1 and plan[1][0] == plan[1][1]
    fsdp = [plan[n][1] for n in sorted(plan)]
    assert all(a > b for a, b in zip(fsdp, fsdp[1:]))
    weights = float(re.search(r"base weights \(bfloat16\):\s+([\d.]+) GiB", out).group(1))
    # 2 -> 4 GPUs saves a quarter of the weights (the gathered layers and the rest are the same)
    assert plan[2][1] - plan[4][1] == pytest.approx(weights / 4, abs=0.11)
