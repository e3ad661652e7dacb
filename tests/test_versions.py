"""The supported torch/transformers/peft range is stated in the package and enforced at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clsharelora import versions
from clsharelora.cli import main


def test_the_installed_pins_are_inside_the_supported_range():
    assert versions.problems() == []


def test_a_version_below_or_above_the_range_is_named_with_the_range():
    found = versions.problems({"torch": "2.10.0", "transformers": "6.0.0", "peft": "0.21.2"})
    assert len(found) == 2
    assert "torch 2.10.0 is outside the range clsharelora supports (torch>=2.11,<3)" in found[0]
    assert "transformers 6.0.0" in found[1] and "transformers>=5.17,<6" in found[1]
    assert "peft" in versions.problems({"torch": "2.11.0", "transformers": "5.17.0", "peft": None})[0]


def test_run_refuses_an_unsupported_torch_with_one_error_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(versions, "installed", lambda name: "2.10.0" if name == "torch" else versions.md.version(name))
    code = main(["run", "--model", "tiny-llama", "--out", str(tmp_path / "r"), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: torch 2.10.0 is outside"), err
    assert not (tmp_path / "r").exists()


def test_the_script_form_checks_only_the_named_packages(tmp_path):
    """install.sh runs versions.py as a plain script (copied into the bundle) before installing anything."""
    script = Path(versions.__file__)
    ok = subprocess.run([sys.executable, str(script), "torch", "transformers"], capture_output=True, text=True,
                        cwd=tmp_path)
    assert ok.returncode == 0 and "peft" not in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, str(script), "numpy"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown package 'numpy'")
