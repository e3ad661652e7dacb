"""The package installs like the field's tools: a wheel whose only top-level import name is `clsharelora`
(strategies, analysis and bench under it), installed non-editable into a fresh venv, where `clsharelora list`
shows the built-in strategies and `clsharelora report` works."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from clsharelora.analysis.fake_runs import write_run
from clsharelora.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(PROJECT_ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return next(out.glob("clsharelora-*.whl"))


def test_the_wheel_installs_only_the_clsharelora_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"clsharelora"}, top
    for module in ("clsharelora/strategies/sharelora.py", "clsharelora/analysis/report.py",
                   "clsharelora/bench/run.py", "clsharelora/bench/lm_eval_tasks/mmlu_letters.yaml",
                   "clsharelora/evaluation/sandbox/__init__.py", "clsharelora/streams/demo.yaml",
                   "clsharelora/configs/llama2-7b.yaml", "clsharelora/configs/accelerate/2nodes.yaml"):
        assert module in names, module
    packaged = {str(Path(n).parent) for n in names if n.endswith("__init__.py")}
    for init in PROJECT_ROOT.joinpath("clsharelora").rglob("__init__.py"):  # no subpackage forgotten
        assert str(init.parent.relative_to(PROJECT_ROOT)) in packaged, init


def test_a_fresh_venv_runs_list_and_report_from_the_wheel(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (torch, peft, ...) come from this environment's site-packages, but not its editable
    # clsharelora: a plain path line does not run the .pth hooks found there
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLSHARELORA_STRATEGY_PATH")}
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    where = subprocess.run([str(python), "-c", "import clsharelora, clsharelora.strategies as s; "
                            "print(clsharelora.__file__); print(s.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(site) for line in where.stdout.split()), where.stdout
    cli = env_dir / "bin" / "clsharelora"
    listed = subprocess.run([str(cli), "list"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "warning" not in listed.stderr
    for name in ("lora", "sharelora", "vera", "naive", "replay", "ewc", "olora", "lwf", "joint"):
        assert name in listed.stdout, (name, listed.stdout)
    assert "streams:    demo, paper" in listed.stdout, listed.stdout
    # the default stream and a built-in config resolve from the installed package, not the repository
    found = subprocess.run([str(python), "-c", "from clsharelora.benchmarks.stream import load_stream; "
                            "from clsharelora.paths import resolve_builtin; print(load_stream('streams/demo.yaml').path); "
                            "print(resolve_builtin('configs/demo.yaml', 'configs'))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert found.returncode == 0, found.stderr
    assert all(line.startswith(site) for line in found.stdout.split()), found.stdout
    write_run(tmp_path / "runs", "r", [[0.1, 0.1], [0.5, 0.1], [0.4, 0.6]], tasks=("gsm8k", "mmlu"),
              experiences=("gsm8k", "mmlu"))
    report = subprocess.run([str(cli), "report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "rep" / "report.html").is_file()
