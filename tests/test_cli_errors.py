"""Bad input: one clear `error:` line naming the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clsharelora.cli import main
from clsharelora.paths import data_root


def _stream(tmp_path: Path, experiences) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "experiences": experiences}))
    return path


def _corrupt_data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for child in data_root().iterdir():
        if child.name != "gsm8k":
            (root / child.name).symlink_to(child)
    (root / "gsm8k").mkdir()
    lines = (data_root() / "gsm8k" / "train.jsonl").read_text().splitlines()[:5]
    lines[3] = lines[3][:40]  # a truncated JSON line
    (root / "gsm8k" / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "gsm8k" / "test.jsonl").symlink_to(data_root() / "gsm8k" / "test.jsonl")
    return root


CASES = {
    "yaml syntax": (lambda t: ["--config", str(_write(t / "c.yaml", "train:\n  lr: [1\n"))], r"c\.yaml:\d+:\d+: invalid YAML"),
    "unknown key": (lambda t: ["--config", str(_write(t / "c.yaml", "trian: {}\n"))], "did you mean 'train'"),
    "unknown --set key": (lambda t: ["--set", "train.lrr=1"], "did you mean 'lr'"),
    "unknown strategy": (lambda t: ["--strategy", "sharelor"], "did you mean 'sharelora'.*known: lora, sharelora, vera"),
    "unknown cl": (lambda t: ["--cl", "replya"], "did you mean 'replay'"),
    "unknown stream": (lambda t: ["--stream", "nope"], "stream 'nope' not found.*demo"),
    "unknown model": (lambda t: ["--model", "llama9"], "unknown model 'llama9'.*smollm2-135m"),
    "missing data root": (lambda t: ["--data-root", str(t / "none")], "is not a directory"),
    "corrupt data": (lambda t: ["--data-root", str(_corrupt_data_root(t))], r"train\.jsonl.*4"),
    "r <= 0": (lambda t: ["--set", "adapter.r=0"], "'r' must be a positive integer"),
    "bad variant": (lambda t: ["--variant", "share_c"], "share_a, share_b, share_ab"),
    "empty stream": (lambda t: ["--stream", str(_stream(t, []))], "non-empty list"),
    "task without evaluator": (lambda t: ["--stream", str(_stream(t, [{"train": {"benchmark": "gsm8k"}}]))],
                               "without an evaluator"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, capsys, tiny_stream_file):
    make_args, pattern = CASES[case]
    out = tmp_path / "out"
    args = ["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--out", str(out)]
    code = main(args + make_args(tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not out.exists(), "nothing may be written for bad input"


def test_output_dir_holding_another_run(tmp_path, capsys, tiny_stream_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m", "seed": 5}))
    before = sorted(p.name for p in out.iterdir())
    args = ["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--out", str(out)]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert main(["run", "--stream", str(tiny_stream_file), "--out", str(tmp_path / "other")]) == 2
    assert "holds no clsharelora run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_real_process_exit_code_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "clsharelora.cli", "run", "--model", "nope-model",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown model 'nope-model'")
    assert "Traceback" not in done.stderr


def test_help_everywhere():
    for args in (["--help"], ["run", "--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 0
