"""clsharelora.hardware: CPU threads from the affinity mask and the cgroup CPU quota (fake /proc and /sys
trees for cgroup v1, v2 and the v1 hybrid this project's machines use), and native-bf16 detection with the
fp32 fallback, end to end on tiny-llama."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clsharelora import hardware
from clsharelora.cli import main
from clsharelora.errors import ConfigError


# ---------------------------------------------------------------------------------- fake trees
def _mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """mountinfo lines from (fstype, root, mount point, super options)."""
    return "".join(f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime - {fs} {fs} {opts}\n"
                   for i, (fs, root, point, opts) in enumerate(mounts))


def fake_v1(tmp: Path, quota: int, period: int = 100_000, path: str = "/", mount_root: str = "/",
            parent: tuple[int, int] | None = None, controllers: str = "cpu,cpuacct") -> Path:
    """cgroup v1: the cpu controller mounted at /sys/fs/cgroup/<controllers>; the process in `path`."""
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/self/cgroup").write_text(f"12:memory:{path}\n4:{controllers}:{path}\n0::/\n")
    point = f"/sys/fs/cgroup/{controllers}"
    (tmp / "proc/self/mountinfo").write_text(_mountinfo(("tmpfs", "/", "/sys/fs/cgroup", "rw"),
                                                        ("cgroup", mount_root, point, f"rw,{controllers}"),
                                                        ("cgroup", "/", "/sys/fs/cgroup/memory", "rw,memory")))
    rel = path[len(mount_root.rstrip("/")):] if mount_root != "/" else path
    leaf = tmp / point.lstrip("/") / rel.lstrip("/")
    leaf.mkdir(parents=True, exist_ok=True)
    (leaf / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (leaf / "cpu.cfs_period_us").write_text(f"{period}\n")
    if parent is not None:
        up = leaf.parent
        (up / "cpu.cfs_quota_us").write_text(f"{parent[0]}\n")
        (up / "cpu.cfs_period_us").write_text(f"{parent[1]}\n")
    return tmp


def fake_v2(tmp: Path, cpu_max: str | None, path: str = "/job.slice/job-1.scope",
            parent_max: str | None = None, point: str = "/sys/fs/cgroup") -> Path:
    """cgroup v2 unified at `point`, the process in `path`; cpu.max absent when None."""
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/self/cgroup").write_text(f"0::{path}\n")
    (tmp / "proc/self/mountinfo").write_text(_mountinfo(("cgroup2", "/", point, "rw,nsdelegate")))
    leaf = tmp / point.lstrip("/") / path.lstrip("/")
    leaf.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (leaf / "cpu.max").write_text(cpu_max + "\n")
    if parent_max is not None:
        (leaf.parent / "cpu.max").write_text(parent_max + "\n")
    return tmp


def closed_form(affinity: int, quota: int, period: int) -> int:
    return min(affinity, max(1, math.floor(quota / period))) if quota > 0 else affinity


# ---------------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("trial", range(3))
def test_v1_quota_on_random_inputs_matches_the_closed_form(tmp_path, trial):
    seed = random.randrange(10**9)
    rng = random.Random(seed)
    period = rng.choice([10_000, 50_000, 100_000, 250_000])
    quota = rng.choice([-1, rng.randint(1_000, 16 * period)])
    affinity = rng.randint(1, 16)
    root = fake_v1(tmp_path, quota, period, path=f"/batch/job{rng.randint(1, 99)}")
    choice = hardware.choose_cpu_threads(env={}, root=root, affinity=affinity)
    assert choice.threads == closed_form(affinity, quota, period), seed
    # what `study --jobs` / `compare --jobs` split between their runs: the same closed form
    assert hardware.usable_cpus(root, affinity) == closed_form(affinity, quota, period), seed
    if quota > 0:
        assert choice.quota_cpus == pytest.approx(quota / period), seed
    else:
        assert choice.quota_cpus is None and choice.source == "affinity", seed


@pytest.mark.parametrize("trial", range(3))
def test_v2_quota_on_random_inputs_matches_the_closed_form(tmp_path, trial):
    seed = random.randrange(10**9)
    rng = random.Random(seed)
    period = rng.choice([10_000, 100_000])
    quota = rng.choice([-1, rng.randint(1_000, 16 * period)])
    affinity = rng.randint(1, 16)
    root = fake_v2(tmp_path, f"{'max' if quota < 0 else quota} {period}")
    choice = hardware.choose_cpu_threads(env={}, root=root, affinity=affinity)
    assert choice.threads == closed_form(affinity, quota, period), seed
    assert hardware.usable_cpus(root, affinity) == closed_form(affinity, quota, period), seed


def test_v1_quota_of_two_cpus_on_eight_allowed_gives_two(tmp_path):
    root = fake_v1(tmp_path, 200_000, 100_000, path="/docker/abc")
    choice = hardware.choose_cpu_threads(env={}, root=root, affinity=8)
    assert (choice.threads, choice.source, choice.quota_cpus) == (2, "cgroup quota", 2.0)
    assert "cgroup v1" in choice.reason and "200000/100000" in choice.reason


def test_v2_quota_gives_floor_and_max_means_none(tmp_path):
    choice = hardware.choose_cpu_threads(env={}, root=fake_v2(tmp_path / "a", "300000 100000"), affinity=16)
    assert (choice.threads, choice.source) == (3, "cgroup quota") and "cgroup v2" in choice.reason
    choice = hardware.choose_cpu_threads(env={}, root=fake_v2(tmp_path / "b", "max 100000"), affinity=16)
    assert (choice.threads, choice.source, choice.quota_cpus) == (16, "affinity", None)


def test_no_cgroup_files_or_no_quota_means_the_affinity_mask(tmp_path):
    assert hardware.cgroup_cpu_limit(tmp_path) is None                  # no /proc at all
    choice = hardware.choose_cpu_threads(env={}, root=fake_v1(tmp_path / "v1", -1), affinity=6)
    assert (choice.threads, choice.source) == (6, "affinity")
    choice = hardware.choose_cpu_threads(env={}, root=fake_v2(tmp_path / "v2", None), affinity=6)
    assert (choice.threads, choice.source) == (6, "affinity")


@pytest.mark.parametrize("quota, period, expected", [(150_000, 100_000, 1), (50_000, 100_000, 1),
                                                     (250_000, 100_000, 2), (1_000, 100_000, 1)])
def test_fractional_quota_rounds_down_to_at_least_one_thread(tmp_path, quota, period, expected):
    """A pool wider than the quota is throttled mid-region, so 2.5 CPUs get 2 threads; never 0."""
    choice = hardware.choose_cpu_threads(env={}, root=fake_v1(tmp_path, quota, period), affinity=8)
    assert choice.threads == expected and choice.quota_cpus == pytest.approx(quota / period)


def test_affinity_smaller_than_quota_wins(tmp_path):
    choice = hardware.choose_cpu_threads(env={}, root=fake_v2(tmp_path, "800000 100000"), affinity=2)
    assert (choice.threads, choice.source, choice.quota_cpus) == (2, "affinity", 8.0)


def test_a_parent_cgroup_limit_binds_its_child(tmp_path):
    root = fake_v1(tmp_path / "v1", 400_000, 100_000, path="/slurm/uid_1/job_7", parent=(150_000, 100_000))
    assert hardware.choose_cpu_threads(env={}, root=root, affinity=8).threads == 1
    root = fake_v2(tmp_path / "v2", "max 100000", parent_max="200000 100000")
    assert hardware.choose_cpu_threads(env={}, root=root, affinity=8).threads == 2


def test_container_mount_root_and_hybrid_layout(tmp_path):
    # v1 without a cgroup namespace: /proc/self/cgroup shows the host path, the mount's root is that path
    root = fake_v1(tmp_path / "c", 200_000, path="/docker/0123", mount_root="/docker/0123", controllers="cpu")
    assert hardware.cgroup_cpu_limit(root).cpus == 2.0
    # hybrid (this project's machines): cpu controller on v1, cgroup2 mounted at /sys/fs/cgroup/unified
    root = fake_v1(tmp_path / "h", 100_000, controllers="cpu")
    (root / "proc/self/mountinfo").write_text((root / "proc/self/mountinfo").read_text()
                                              + _mountinfo(("cgroup2", "/", "/sys/fs/cgroup/unified", "rw")))
    (root / "sys/fs/cgroup/unified").mkdir(parents=True)
    limit = hardware.cgroup_cpu_limit(root)
    assert limit.cpus == 1.0 and "cgroup v1" in limit.source


def test_processes_on_one_machine_share_it(tmp_path):
    root = fake_v2(tmp_path, "600000 100000")
    choice = hardware.choose_cpu_threads(env={"LOCAL_WORLD_SIZE": "4"}, root=root, affinity=16)
    assert choice.threads == 1 and "LOCAL_WORLD_SIZE=4" in choice.reason       # floor(6 / 4)
    assert hardware.choose_cpu_threads(env={"LOCAL_WORLD_SIZE": "8"}, root=root, affinity=16).threads == 1
    assert hardware.choose_cpu_threads(env={"LOCAL_WORLD_SIZE": "2"}, root=root, affinity=16).threads == 3


def test_escaped_mount_point(tmp_path):
    root = fake_v2(tmp_path, "100000 100000", point="/sys/fs/cgroup v2")
    info = (root / "proc/self/mountinfo").read_text().replace("cgroup v2", "cgroup\\040v2")
    (root / "proc/self/mountinfo").write_text(info)
    assert hardware.cgroup_cpu_limit(root).cpus == 1.0


def test_user_omp_num_threads_wins_and_bad_values_are_user_errors(tmp_path):
    root = fake_v1(tmp_path, 100_000)
    choice = hardware.choose_cpu_threads(env={"OMP_NUM_THREADS": "3"}, root=root, affinity=8)
    assert (choice.threads, choice.source) == (3, "OMP_NUM_THREADS") and "1 CPUs" in choice.reason
    assert hardware.choose_cpu_threads(env={"OMP_NUM_THREADS": "4,2"}, root=root, affinity=8).threads == 4
    # the value clsharelora exported itself is no user setting: a child process re-derives it
    env = {"OMP_NUM_THREADS": "1", hardware.CHOSEN_ENV: "1"}
    assert hardware.choose_cpu_threads(env=env, root=root, affinity=8).source == "cgroup quota"
    for bad in ("0", "abc", "-2", "2.5"):
        with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
            hardware.choose_cpu_threads(env={"OMP_NUM_THREADS": bad}, root=root, affinity=8)


def test_cli_names_a_bad_omp_num_threads_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--model", "tiny-llama", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: OMP_NUM_THREADS='many'")
    assert list(tmp_path.iterdir()) == []


def test_apply_exports_the_choice_and_sets_torch(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv(hardware.CHOSEN_ENV, raising=False)
    monkeypatch.setattr(hardware, "_applied", None)
    before = torch.get_num_threads()
    try:
        choice = hardware.apply_cpu_threads()
        import os

        assert os.environ["OMP_NUM_THREADS"] == os.environ[hardware.CHOSEN_ENV] == str(choice.threads)
        assert torch.get_num_threads() == choice.threads
        assert hardware.thread_record()["applied"] and hardware.thread_record()["threads"] == choice.threads
        assert hardware.apply_cpu_threads() == choice        # a child (or second call) re-derives, not "user"
    finally:
        torch.set_num_threads(before)


# -------------------------------------------------------------------------------------------- bf16
AVX2_EPYC = {"capability": "AVX2", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
SKYLAKE = {"capability": "AVX512", "avx2": True, "avx512_f": True, "avx512_bw": True, "avx512_bf16": False}
SAPPHIRE = {"capability": "AVX512", "avx512_f": True, "avx512_bf16": True, "amx_bf16": True, "amx_tile": True}


@pytest.mark.parametrize("caps, flags, gemm, native", [
    (AVX2_EPYC, {"avx", "avx2", "fma"}, False, False),          # the CPU
    (SKYLAKE, {"avx512f", "avx512bw"}, True, False),            # oneDNN emulates bf16 there: not native
    (SAPPHIRE, set(), True, True),
    ({"capability": "AVX512"}, {"avx512f", "avx512_bf16"}, None, True),   # an older torch: cpuinfo decides
    ({"capability": "AVX512"}, {"avx512_bf16"}, False, False),  # instructions, but torch cannot use them
    ({"capability": "SVE256", "bf16": True}, set(), True, True),           # ARM64 (Graviton3)
    ({"capability": "DEFAULT"}, {"fp", "asimd", "svebf16"}, None, True),
    ({}, set(), None, False),
])
def test_bf16_detection_on_fake_inputs(caps, flags, gemm, native):
    support = hardware.cpu_bf16_support(caps, flags, gemm, cpu="Fake CPU")
    assert support.native is native
    assert "Fake CPU" in support.reason
    if native:
        assert support.instructions
    if caps.get("capability"):
        assert caps["capability"] in support.reason


def test_read_cpuinfo_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
                   "flags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\nflags\t: avx512_bf16\n")
    assert hardware.read_cpuinfo(x86) == ("AMD EPYC 7B13", {"fpu", "sse2", "avx", "avx2", "fma"})
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 svebf16\n\n")
    model, flags = hardware.read_cpuinfo(arm)
    assert model is None and {"bf16", "svebf16"} <= flags
    assert hardware.read_cpuinfo(tmp_path / "missing") == (None, set())


def _facts(native: bool) -> dict:
    return {"cpu": "Fake CPU", "capability": "AVX512" if native else "AVX2", "bf16_native": native,
            "bf16_instructions": ["avx512_bf16"] if native else [],
            "bf16_reason": "native bf16 on Fake CPU" if native else "no native bf16 on Fake CPU (AVX2)"}


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_facts", lambda: _facts(False))
    monkeypatch.setattr(hardware, "_warned", set())


def test_eval_context_falls_back_on_cpu_only(cpu_without_bf16, monkeypatch, capsys):
    from clsharelora.evaluation.generation import eval_context

    model = torch.nn.Linear(2, 2)
    for _ in range(3):
        with eval_context(model, autocast=True):
            assert not torch.is_autocast_enabled("cpu")
            assert model(torch.ones(1, 2)).dtype == torch.float32
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: eval.autocast=true ignored, computing in fp32: no native bf16 on Fake CPU (AVX2)"]
    assert hardware.bf16_for("cuda", True, "train.bf16") is True           # CUDA is unaffected
    monkeypatch.setattr(hardware, "cpu_facts", lambda: _facts(True))
    with eval_context(model, autocast=True):
        assert model(torch.ones(1, 2)).dtype == torch.bfloat16


ONE_EXP = """\
name: one
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 4, max_steps: 2, max_length: 256}
    eval: {task: mmlu, n: 2, shots: 0}
"""


def test_bf16_request_on_a_cpu_without_bf16_trains_in_fp32_and_says_so(cpu_without_bf16, tmp_path, capsys):
    stream = tmp_path / "one.yaml"
    stream.write_text(ONE_EXP)
    common = ["run", "--stream", str(stream), "--model", "tiny-llama", "--strategy", "lora", "--no-progress",
              "--device", "cpu", "--set", "train.batch_size=2"]
    assert main([*common, "--out", str(tmp_path / "fp32")]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "asked_bf16"), "--set", "train.bf16=true",
                 "--set", "eval.autocast=true"]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert warnings == ["warning: train.bf16=true ignored, computing in fp32: no native bf16 on Fake CPU (AVX2)",
                        "warning: eval.autocast=true ignored, computing in fp32: no native bf16 on Fake CPU (AVX2)"]
    # trained in fp32: the adapter and the scores equal the fp32 run's exactly
    fp32 = load_file(str(tmp_path / "fp32/adapters/exp_1/adapter_model.safetensors"))
    asked = load_file(str(tmp_path / "asked_bf16/adapters/exp_1/adapter_model.safetensors"))
    assert fp32.keys() == asked.keys()
    for name in fp32:
        assert torch.equal(fp32[name], asked[name]), name
    results = json.loads((tmp_path / "asked_bf16/results.json").read_text())
    assert results["matrices"] == json.loads((tmp_path / "fp32/results.json").read_text())["matrices"]
    precision = results["precision"]
    assert precision["bf16_native"] is False and precision["capability"] == "AVX2"
    assert precision["train.bf16"] == {"requested": True, "used": False, "fallback": "fp32"}
    assert precision["eval.autocast"] == {"requested": True, "used": False, "fallback": "fp32"}
    env = json.loads((tmp_path / "asked_bf16/environment.json").read_text())
    assert env["cpu"]["threads"]["threads"] >= 1 and env["cpu"]["capability"]


# ------------------------------------------------------------------------------------------- bench
def test_neighbour_is_a_busy_process_and_is_stopped():
    from clsharelora.bench.neighbour import neighbour

    with neighbour() as proc:
        assert proc.poll() is None
        time.sleep(0.3)
        utime = int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[11])
        assert utime > 0                                           # it burns CPU (clock ticks in user mode)
    assert proc.poll() is not None


def test_bench_figures_carry_the_cpu_and_the_thread_choice(tmp_path, capsys):
    from clsharelora.bench import run as bench_run

    assert bench_run.main(["--quick", "--only", "neighbour,meta", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    capability = torch.backends.cpu.get_cpu_capability()
    line = hardware.machine_line()
    assert capability in line and hardware.cpu_facts()["cpu"] in line
    assert printed.count(line) == 3                                # under both tables and the summary
    for part in ("neighbour", "meta"):
        machine = json.loads((tmp_path / f"{part}.json").read_text())["machine"]
        assert machine["cpu_capability"] == capability and machine["threads"]["threads"] >= 1
        assert machine["bf16_native"] == hardware.cpu_facts()["bf16_native"]
    res = json.loads((tmp_path / "neighbour.json").read_text())["result"]
    assert res["thread_choice"]["threads"] == res["thread_choice"]["torch_threads"] == res["rows"][0]["threads"]
    assert [r["chosen"] for r in res["rows"]][0] is True
    for row in res["rows"]:
        assert row["ratio"] == pytest.approx(row["loaded_step"]["median"] / row["lone_step"]["median"])
    summary = json.loads((tmp_path / "summary-neighbour-meta.json").read_text())
    assert summary["machine_line"] == line and "demo step beside a busy core" in printed
