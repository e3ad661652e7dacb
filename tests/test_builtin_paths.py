"""Built-in streams and configs resolve wherever the command runs, not only inside the repository: the
default stream `streams/demo.yaml` once failed with "not found" from any other directory."""

from __future__ import annotations

import pytest

from clsharelora.benchmarks.stream import load_stream
from clsharelora.cli import main
from clsharelora.errors import ConfigError
from clsharelora.paths import builtin_dir, builtin_names, resolve_builtin


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The current directory is an empty folder outside the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_names_and_relative_paths_mean_the_shipped_files(elsewhere):
    demo = builtin_dir("streams") / "demo.yaml"
    for given in ("demo", "demo.yaml", "streams/demo.yaml"):
        assert resolve_builtin(given, "streams") == demo, given
    assert resolve_builtin("configs/llama2-7b.yaml", "configs") == builtin_dir("configs") / "llama2-7b.yaml"
    assert load_stream("streams/paper.yaml").path == str(builtin_dir("streams") / "paper.yaml")
    assert {"demo", "paper"} <= set(builtin_names("streams"))
    assert {"demo", "llama2-7b", "study-cpu"} <= set(builtin_names("configs"))


def test_a_file_here_wins_and_a_missing_one_is_named(elsewhere):
    (elsewhere / "streams").mkdir()
    (elsewhere / "streams" / "demo.yaml").write_text("name: mine\n")
    assert resolve_builtin("streams/demo.yaml", "streams").resolve() == elsewhere / "streams" / "demo.yaml"
    with pytest.raises(ConfigError, match=r"stream 'nope' not found; give a YAML path or one of: demo, paper"):
        load_stream("nope")


def test_the_default_run_dry_runs_from_any_directory(elsewhere, capsys):
    assert main(["run", "--model", "tiny-llama", "--strategy", "lora", "--dry-run"]) == 0
    assert main(["run", "--config", "demo", "--model", "tiny-llama", "--strategy", "lora", "--print-config"]) == 0
    assert "stream: streams/demo.yaml" in capsys.readouterr().out
    assert not any(elsewhere.iterdir())
