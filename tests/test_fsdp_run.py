"""train.engine=fsdp through `clsharelora run`: FSDP2 (engine.fully_sharded) on 2 gloo processes on CPU.

- item-level scores of a sharded model (ranks score different items: different batch counts and, for GSM8K,
  different numbers of decode steps; engine.Lockstep keeps their forwards in step) equal one process's;
- a whole run on 2 processes with fsdp reaches the adapter of 1 process after each experience and the same R,
  and its saved ShareLoRA adapter loads on one process tied;
- a 2-process fsdp run killed mid-experience resumes to the uninterrupted run (checkpoint gathered whole);
- a wrong train.engine is one `error:` line, exit 2, nothing written; a CL method fsdp cannot run is refused
  by the run's validation before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from test_multiprocess import (ACCELERATE, ARGS, STRATEGIES, STREAM, _run, _same_adapters, _same_results,
                               killed_and_resumed_equals_uninterrupted)

FSDP = ["--set", "train.engine=fsdp"]


# ------------------------------------------------------------------ item-level scores, 2 gloo processes

def _scoring_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from clsharelora.adapters import ShareLoraConfig, apply_sharelora
    from clsharelora.evaluation.gsm8k import GSM8KEvaluator
    from clsharelora.evaluation.multiple_choice import MMLUEvaluator
    from clsharelora.models import load_model, load_tokenizer
    from clsharelora.training import engine
    from clsharelora.training.distributed import Dist
    from clsharelora.training.results import ResultsStore
    from clsharelora.training.scoring import ScoringPlugin

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model = apply_sharelora(load_model("tiny-llama", seed=3), ShareLoraConfig(variant="share_a", r=4, dropout=0.0))
        g = torch.Generator().manual_seed(5)   # B starts at zero: random adapters make them matter
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        d = Dist(rank=rank, world_size=world)
        if world > 1:
            engine.fully_sharded(model, d)
        evaluators = [GSM8KEvaluator(n=5, seed=11, shots=1, max_new_tokens=8, batch_size=2),
                      MMLUEvaluator(n=9, seed=11, shots=1, batch_size=3)]
        store = ResultsStore({}, [e.task for e in evaluators], [e.task for e in evaluators])
        plugin = ScoringPlugin(evaluators, load_tokenizer("tiny-llama"), store, out, adapter=None, dist=d,
                               progress=False)
        forwards = [0]
        engine.stack_of(model).register_forward_pre_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))
        row, items = plugin.score(model)
        row2, _ = plugin.score(model)   # twice: the Lockstep and the resharding leave a reusable state
        mine = [len(s) for s in __import__("clsharelora.evaluation.items", fromlist=["x"]).shard_indices(
            evaluators[0].item_costs(), world)]
        np.save(os.path.join(out, f"world{world}-rank{rank}.npy"),
                {"row": row, "row2": row2, "items": items, "forwards": forwards[0], "gsm8k_shards": mine},
                allow_pickle=True)
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_item_scores_of_a_sharded_model_on_two_processes_equal_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    for w in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_scoring_worker, args=(w, port, str(tmp_path)), nprocs=w, join=True)
    load = lambda w, r: np.load(tmp_path / f"world{w}-rank{r}.npy", allow_pickle=True).item()   # noqa: E731
    one, two, two_b = load(1, 0), load(2, 0), load(2, 1)
    assert two["forwards"] == two_b["forwards"]          # the Lockstep: equal forwards on both ranks
    assert two["gsm8k_shards"] == [3, 2] or two["gsm8k_shards"] == [2, 3]   # uneven shares: the case it guards
    for a, b, b2 in zip(one["row"], two["row"], two["row2"]):
        assert a["task"] == b["task"] and a["n"] == b["n"]
        assert a["accuracy"] == b["accuracy"] == b2["accuracy"]
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-5) and b2["nll"] == pytest.approx(b["nll"], rel=1e-6)
    for task, fields in one["items"].items():
        for key, value in fields.items():
            np.testing.assert_allclose(two["items"][task][key], value, rtol=1e-5, atol=1e-6, err_msg=f"{task} {key}")


# ------------------------------------------------------------------------------ whole runs, `clsharelora run`

@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lora", "share_a"])
def test_fsdp_on_two_processes_reaches_the_adapter_and_r_of_one_process(tmp_path, strategy):
    from transformers import AutoModelForCausalLM

    from clsharelora.adapters import is_tied, load_sharelora
    from clsharelora.models import configs

    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    # micro-batch 1: 2 accumulation micro-steps on 2 processes (gradient sync off on the first), 4 on 1
    args = [*ARGS, "--set", "train.batch_size=1", *STRATEGIES[strategy], "--stream", str(stream)]
    two, one = tmp_path / "two", tmp_path / "one"
    done = _run([*ACCELERATE, *args, *FSDP, "--out", str(two)], tmp_path)
    assert done.stdout.count("results:") == 2
    _run([sys.executable, "-m", "clsharelora.cli", *args, "--out", str(one)], tmp_path)
    r1, r2 = _same_results(one, two)
    assert r1["cost"]["optimizer_steps"] == [2, 6]
    assert (r1["run"]["batching"]["accumulation"], r2["run"]["batching"]["accumulation"]) == (4, 2)
    _same_adapters(one, two)
    if strategy == "share_a":   # the gathered save is the peft + sharelora.json format, and loads tied
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(configs.tiny_llama())
        assert is_tied(load_sharelora(base, two / "adapters" / "exp_2"))


@pytest.mark.slow
@pytest.mark.parametrize("cl", ["replay", "joint"])
def test_the_cl_methods_fsdp_allows_reach_the_adapter_and_r_of_one_process(tmp_path, cl):
    """replay (its own sampler) and joint training (one experience on the union) under FSDP."""
    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    args = [*ARGS, *STRATEGIES["share_a"], "--cl", cl, "--stream", str(stream)]
    two, one = tmp_path / "two", tmp_path / "one"
    _run([*ACCELERATE, *args, *FSDP, "--out", str(two)], tmp_path)
    _run([sys.executable, "-m", "clsharelora.cli", *args, "--out", str(one)], tmp_path)
    exps = sorted(p.name for p in (one / "adapters").iterdir())
    _same_adapters(one, two, exps=exps)
    _same_results(one, two)


@pytest.mark.slow
def test_fsdp_two_processes_killed_mid_experience_resume_to_the_uninterrupted_run(tmp_path):
    killed_and_resumed_equals_uninterrupted(tmp_path, FSDP)


# ------------------------------------------------------------------------------------- refused up front

def test_a_wrong_engine_is_one_error_line_exit_2_and_nothing_written(tmp_path):
    extra, named = ["--set", "train.engine=zero3"], ["'zero3'", "ddp | fsdp"]
    out = tmp_path / "run"
    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    done = subprocess.run([sys.executable, "-m", "clsharelora.cli", *ARGS, "--strategy", "sharelora", *extra,
                           "--stream", str(stream), "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert all(n in lines[0] for n in named), lines[0]
    assert not out.exists()


def test_fsdp_refuses_what_changes_the_parameter_list_or_is_untested_naming_what_is_allowed(tmp_path):
    from clsharelora.config import RunConfig, TrainConfig
    from clsharelora.errors import ConfigError
    from clsharelora.training import engine, runner

    stream = tmp_path / "epochs.yaml"
    stream.write_text(STREAM)
    config = RunConfig(model="tiny-llama", stream=str(stream), cl={"name": "lwf"}, out=str(tmp_path / "run"),
                       train=TrainConfig(engine="fsdp"))
    with pytest.raises(ConfigError, match="'lwf'.*allowed with fsdp: naive, replay, joint"):
        runner.prepare(config)   # the run's own validation, before anything is written
    assert not (tmp_path / "run").exists()

    engine.check_fsdp_combination("sharelora", "replay", False)   # allowed: nothing raised
    for args, named in [(("sharelora", "olora", False), ["'olora'", "parameter list", "naive, replay, joint"]),
                        (("sharelora", "ewc", False), ["'ewc'", "naive, replay, joint"]),
                        (("vera", "naive", False), ["'vera'", "lora, sharelora"]),
                        (("lora", "naive", True), ["load_in_4bit"])]:
        with pytest.raises(ConfigError) as err:
            engine.check_fsdp_combination(*args)
        assert all(n in str(err.value) for n in named), str(err.value)


def test_dry_run_names_the_engine_train_engine_selects(capsys, monkeypatch):
    from pathlib import Path

    from clsharelora.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "llama2-7b.yaml")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(["run", "--config", config, "--set", "train.engine=fsdp", "--dry-run"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("engine:")]
    assert len(lines) == 1 and lines[0].startswith("engine: FSDP2 (train.engine=fsdp") and "over 4 processes" in lines[0]


def test_runs_written_before_train_engine_existed_resume_and_an_fsdp_run_does_not_resume_as_ddp():
    """The run identity leaves train.engine out at its default: a config.yaml without the key (a DDP run of
    an older version) still matches; fsdp against ddp is a difference, so --resume refuses to switch."""
    from clsharelora.config import RunConfig, TrainConfig
    from clsharelora.training.rundir import _identifying, dotted_differences, resolved_config_dict

    before = RunConfig().to_dict()
    del before["train"]["engine"]
    assert dotted_differences(_identifying(before), resolved_config_dict(RunConfig())) == []
    assert dotted_differences(_identifying(RunConfig().to_dict()), resolved_config_dict(RunConfig())) == []
    fsdp = RunConfig(train=TrainConfig(engine="fsdp"))
    for old, new in ((RunConfig().to_dict(), fsdp), (fsdp.to_dict(), RunConfig())):
        differing = dotted_differences(_identifying(old), resolved_config_dict(new))
        assert len(differing) == 1 and differing[0].startswith("train.engine"), differing
