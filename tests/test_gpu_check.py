"""`clsharelora gpu-check --device cpu --tiny`: the GPU check's own code on tiny-llama, its output schema,
checks that can fail, CUDA-only parts that say "skipped: no CUDA", and the budget that skips parts."""

from __future__ import annotations

import json

import pytest

from clsharelora import gpu_check
from clsharelora.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One run with an impossible bf16 tolerance (top-1 agreement > 100%): those checks must fail, the
    others pass, and the exit code says so."""
    out = tmp_path_factory.mktemp("gpu-check")
    mp = pytest.MonkeyPatch()
    mp.setitem(gpu_check.TOL, "bf16_top1", 1.01)
    try:
        code = main(["gpu-check", "--device", "cpu", "--tiny", "--out", str(out)])
    finally:
        mp.undo()
    return code, json.loads((out / "gpu-check.json").read_text()), (out / "gpu-check.md").read_text()


def test_schema_and_every_cuda_part_skipped_without_a_figure(report):
    code, data, md = report
    assert set(data) >= {"device", "model", "budget_min", "tolerances", "environment", "correctness", "speed",
                         "elapsed_s", "command"}
    assert data["device"] == "cpu" and data["model"] == "tiny-llama"
    env = data["environment"]
    for key in ("gpu", "gpu_memory_gib", "driver", "cuda", "bf16", "tf32", "sdpa_backends"):
        assert env[key] == "skipped: no CUDA", key
    assert env["torch"] and env["packages"]["peft"]
    speed = data["speed"]
    assert speed["matmul_peak"]["status"] == "skipped: no CUDA" and "flops" not in speed["matmul_peak"]
    for part in ("train", "decode"):
        assert speed[part]["status"] == "skipped: no CUDA" and speed[part]["rows"] == []
    assert md.count("skipped: no CUDA") >= 10 and "## Correctness on cpu: fail" in md


def test_every_correctness_check_is_there_and_the_impossible_one_fails(report):
    code, data, _ = report
    checks = data["correctness"]["checks"]
    for c in checks:
        assert set(c) >= {"name", "status", "value", "tolerance"}, c
    names = [c["name"] for c in checks]
    for variant in ("lora", "share_a", "share_ab"):
        assert sum(n.startswith(f"{variant}: ") for n in names) == (4 if variant == "lora" else 5), variant
    failed = {c["name"] for c in checks if c["status"] == "fail"}
    assert failed == {n for n in names if "bf16 autocast" in n} and len(failed) == 3
    decode = next(c for c in checks if c["name"].startswith("decode loop"))
    assert decode["status"] == "pass" and decode["value"] == f"{len(gpu_check.PROMPTS)}/{len(gpu_check.PROMPTS)}"
    assert len(gpu_check.PROMPTS) >= 16
    sandbox = next(c for c in checks if c["name"].startswith("HumanEval"))
    assert sandbox["status"] == "pass" and sandbox["value"]["wrong"] == "failed"
    assert data["correctness"]["status"] == "fail" and code == 1


def test_a_part_that_does_not_fit_the_budget_is_skipped_and_says_so(tmp_path, capsys):
    assert main(["gpu-check", "--device", "cpu", "--tiny", "--budget-min", "0.001", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu-check.json").read_text())
    assert data["environment"]["status"].startswith("skipped: budget (needs ~1 s")
    assert data["correctness"]["status"].startswith("skipped: budget")


def test_a_bad_budget_is_one_error_line(tmp_path, capsys):
    assert main(["gpu-check", "--device", "cpu", "--budget-min", "-1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --budget-min -1: must be a positive number of minutes (default 8)"]
    assert not (tmp_path / "o").exists()


def test_the_speed_code_runs_on_tiny_llama(tmp_path):
    """The CUDA-only speed parts call train_row / decode_row; run them here on the CPU (tiny-llama, small
    shapes) so their code is exercised before it meets a GPU. These figures are never reported."""
    import torch

    from clsharelora.models import load_model, load_tokenizer

    cpu = torch.device("cpu")
    for adapter in ({"name": "lora"}, {"name": "sharelora", "variant": "share_a"}):
        row = gpu_check.train_row(cpu, "tiny", "tiny-llama", adapter, r=4, batch=2, seq=32, ckpt=True,
                                  peak_flops=None, seconds=0.1)
        assert row["steps"] >= 3 and row["tokens_per_s"] > 0 and row["model_flops_per_s"] > 0
        assert row["mfu"] is None and row["peak_memory_gib"] == "skipped: no CUDA"
        assert row["adapter"] == adapter.get("variant", "lora") and row["planned_memory_gib"] > 0
    model, tokenizer = load_model("tiny-llama", seed=1).eval(), load_tokenizer("tiny-llama")
    prompts = gpu_check.decode_prompts("gsm8k", 8, 2)
    assert len(prompts) == 2 and prompts[0].count("Q: ") == 9 and prompts[0].endswith("A:")
    assert gpu_check.decode_prompts("humaneval", 0, 1)[0].lstrip().startswith(("def ", "from ", "import "))
    row = gpu_check.decode_row(cpu, model, tokenizer, "short", ["Hello", "A longer prompt here", "x"], new=4)
    assert row["batch"] == 3 and row["ours_tokens_per_s"] > 0 and row["hf_generate_tokens_per_s"] > 0
    assert tokenizer.padding_side == load_tokenizer("tiny-llama").padding_side
