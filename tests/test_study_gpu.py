"""configs/study-gpu.yaml: the grid the issue asks for, and `study --dry-run` printing GPU-minutes from
gpu-check's measured throughput when there is one, else from a stated default."""

from __future__ import annotations

import json

from clsharelora.cli import main
from clsharelora.study import estimate
from clsharelora.study.grid import load_study

CONFIG = "configs/study-gpu.yaml"


def test_the_gpu_study_grid():
    study = load_study(CONFIG)
    assert [s.label for s in study.strategies] == ["lora", "sharelora:share_a", "lora-match-share_a",
                                                   "sharelora:share_ab"]
    assert len(study.seeds) >= 4 and len(study.orders) >= 2
    assert study.base["model"] == "smollm2-135m" and study.base["train"]["global_batch"] == 16
    experiences = study.stream["experiences"]
    assert [e["eval"]["task"] for e in experiences] == ["gsm8k", "humaneval", "mmlu", "mmlu_pro"]
    assert all(e["train"]["max_steps"] >= 200 for e in experiences)
    for e in experiences:   # HumanEval has 164 problems: all of them (no n)
        assert e["eval"]["task"] == "humaneval" and "n" not in e["eval"] or e["eval"]["n"] >= 200
        assert e["eval"].get("generate", True)


def test_dry_run_prints_gpu_minutes_from_gpu_checks_throughput_else_a_stated_default(monkeypatch, tmp_path, capsys):
    path = tmp_path / "gpu-check.json"
    path.write_text(json.dumps({"environment": {"gpu": "NVIDIA H200"}, "speed": {"train": [
        {"model": "smollm2-135m", "adapter": "share_a", "model_flops_per_s": 1.0e14},
        {"model": "smollm2-135m", "adapter": "lora", "model_flops_per_s": 2.0e14}]}}))
    monkeypatch.setattr(estimate, "GPU_CHECK_JSON", path)
    assert main(["study", "--config", CONFIG, "--dry-run"]) == 0
    measured = capsys.readouterr().out
    assert f"at 2e+14 FLOP/s sustained (measured by gpu-check on NVIDIA H200 ({path}))" in measured
    monkeypatch.setattr(estimate, "GPU_CHECK_JSON", tmp_path / "absent.json")
    assert main(["study", "--config", CONFIG, "--dry-run"]) == 0
    default = capsys.readouterr().out
    assert "32 cells" in default
    assert "(assumed for a GPU in bf16, no gpu-check measurement; --flops to change)" in default
    minutes = [float(line.rsplit(";", 1)[1].split()[0].replace(",", "")) for text in (measured, default)
               for line in text.splitlines() if "GPU-minutes" in line]
    assert abs(minutes[0] * 2e14 / 1.2e14 - minutes[1]) <= 1   # the rate, not a constant, sets the minutes
