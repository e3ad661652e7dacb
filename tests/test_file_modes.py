"""Every file and folder a run writes follows the umask (0644 / 0755 under umask 022), so collaborators can
read a run: the atomic writer once left mkstemp's 0600 on results.json, the R CSVs, config.yaml, the adapters,
items/ and checkpoints while log.txt (written plainly) was 0644."""

from __future__ import annotations

import os
import stat

import pytest

from clsharelora import atomic
from clsharelora.cli import main

STREAM = """\
name: modes
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 4, max_steps: 1, max_length: 256}
    eval: {task: gsm8k, n: 1, shots: 0, generate: false}
"""


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(root):
    """{relative path: permission bits} of every file and folder under root."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic.write_text(tmp_path / "a.txt", "x")
    with atomic.directory(tmp_path / "d") as d:
        (d / "f").write_text("y")
    assert modes(tmp_path) == {"a.txt": 0o666 & ~mask, "d": 0o777 & ~mask, "d/f": 0o666 & ~mask}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_of_a_run_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    stream = tmp_path / "modes.yaml"
    stream.write_text(STREAM)
    out = tmp_path / "run"
    assert main(["run", "--stream", str(stream), "--strategy", "lora", "--model", "tiny-llama", "--no-progress",
                 "--set", "train.batch_size=2", "--out", str(out)]) == 0
    found = modes(out)
    for must in ("results.json", "R_nll.csv", "config.yaml", "log.txt", "adapters", "items",
                 "checkpoints"):
        assert any(p == must or p.startswith(must + os.sep) for p in found), (must, sorted(found))
    wrong = {p: oct(m) for p, m in found.items()
             if m != (0o777 if os.path.isdir(out / p) else 0o666) & ~mask}
    assert not wrong, wrong
