"""Reliability: same seed => identical results; SIGKILL in the middle of experience 2, then --resume,
gives bit-identical R matrices and adapter weights to an uninterrupted run; completed rows are kept.
Run-directory integrity: a second process into a running run's directory fails naming the holder; a corrupt
checkpoint file falls back to the newest valid checkpoint (same results) or is refused; a stream edited in
place is refused with the keys and experiences that changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_multiprocess import kill_at_checkpoint

STREAM = """\
name: resume
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 8, max_steps: 2, max_length: 256}
    eval: {task: gsm8k, n: 2, shots: 1, max_new_tokens: 4}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 1000, max_steps: 12, max_length: 256}
    eval: {task: mmlu, n: 4, shots: 1}
"""


def _cmd(stream: Path, out: Path, *extra: str) -> list[str]:
    # dropout > 0 makes the run consume the torch RNG, so a wrong RNG restore would show.
    # mmlu/dev holds 285 items: n=1000 is capped (said on stderr, kept in results.json).
    return [sys.executable, "-m", "clsharelora.cli", "run", "--stream", str(stream), "--model", "tiny-llama",
            "--strategy", "sharelora", "--out", str(out), "--no-progress", "--set", "train.batch_size=2",
            "--set", "train.checkpoint_every=1", "--set", "adapter.dropout=0.1", *extra]


def _final(run: Path):
    results = json.loads((run / "results.json").read_text())
    adapter = load_file(str(run / "adapters" / "exp_2" / "adapter_model.safetensors"))
    return results["matrices"], results["scores"], adapter


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    stream = root / "stream.yaml"
    stream.write_text(STREAM)
    done = subprocess.run(_cmd(stream, root / "ref"), check=True, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    (root / "ref.stderr").write_text(done.stderr)
    return stream, root


def test_same_seed_same_results_and_a_second_process_is_locked_out(reference):
    stream, root = reference
    out = root / "again"
    first = subprocess.Popen(_cmd(stream, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not (out / "config.yaml").is_file():
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could start"
    os.kill(first.pid, signal.SIGSTOP)   # holds its lock, frozen, until both attempts are done
    try:
        for extra in ((), ("--resume",)):
            second = subprocess.run(_cmd(stream, out, *extra), capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr
            assert re.search(rf"^error: run directory .*again is in use by pid {first.pid} on host \S+ \(started ",
                             second.stderr, re.M), second.stderr
            assert "Traceback" not in second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    m1, s1, a1 = _final(root / "ref")
    m2, s2, a2 = _final(out)
    assert m1 == m2 and s1 == s2
    assert a1.keys() == a2.keys() and all((a1[k] == a2[k]).all() for k in a1)


def test_sigkill_mid_experience_then_resume_is_bit_identical(reference):
    stream, root = reference
    out = root / "killed"
    latest = out / "checkpoints" / "LATEST"
    proc = subprocess.Popen(_cmd(stream, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # step-00000005-done-1: mid-experience checkpoint of experience 2 (1 done), 3 of its 12 steps done
    killed_at = kill_at_checkpoint(proc, latest, min_step=5, timeout=300)
    assert killed_at, "the run finished before it could be killed mid-experience"
    rows_before = json.loads((out / "results.json").read_text())["scores"]
    # The dead run's lock file stays behind, naming it; the kernel released the lock itself, so it never blocks.
    assert json.loads((out / ".lock").read_text())["pid"] == proc.pid
    assert len(rows_before) == 2, "killed during experience 2: row 0 and row 1 are done"

    done = subprocess.run(_cmd(stream, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    matrices, scores, adapter = _final(out)
    ref_m, ref_s, ref_a = _final(root / "ref")
    assert scores[:2] == rows_before, "completed rows must never be rewritten"
    assert matrices == ref_m and scores == ref_s
    assert adapter.keys() == ref_a.keys()
    for key in adapter:
        assert (adapter[key] == ref_a[key]).all(), key


def test_resume_refuses_a_different_config(reference):
    stream, root = reference
    done = subprocess.run(_cmd(stream, root / "ref", "--resume", "--set", "adapter.r=4"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "holds a different run" in done.stderr and "adapter" in done.stderr
    assert "Traceback" not in done.stderr


def test_capped_n_is_said_once_and_recorded(reference):
    _, root = reference
    notes = [line for line in (root / "ref.stderr").read_text().splitlines() if "train.n=1000" in line]
    assert notes == ["note: experience 'mmlu': train.n=1000 but the data hold 285 items; using 285"]
    run = json.loads((root / "ref" / "results.json").read_text())["run"]
    assert run["n_capped"] == [{"experience": "mmlu", "key": "train.n", "requested": 1000, "used": 285}]


def test_log_shows_every_row_the_last_included(reference):
    _, root = reference
    log = (root / "ref" / "log.txt").read_text()
    results = json.loads((root / "ref" / "results.json").read_text())
    blocks = re.split(r"^-- scores (.*) --$", log, flags=re.M)[1:]
    assert [when for when in blocks[::2]] == ["before training", "after experience 1", "after experience 2"]
    last = dict(re.findall(r"^\t(\S+) = (\S+)$", blocks[-1], flags=re.M))
    for cell in results["scores"][-1]:
        assert float(last[f"Accuracy/Task/{cell['task']}"]) == round(cell["accuracy"], 4)
        assert float(last[f"Nll/Task/{cell['task']}"]) == round(cell["nll"], 4)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _copy_run(root: Path, name: str) -> Path:
    dst = root / name
    shutil.copytree(root / "ref", dst, symlinks=True)
    return dst


def _checkpoints(run: Path) -> list[Path]:
    return sorted((p for p in (run / "checkpoints").iterdir() if p.is_dir()), key=lambda p: p.name)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:len(data) // 2])
    else:  # flip one byte in the middle: same size, different content
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])


CORRUPTIONS = [("adapter.safetensors", "flip"), ("optimizer.pt", "truncate"), ("plugins.pt", "flip"),
               ("rng.pt", "truncate"), ("state.json", "flip"), ("checksums.json", "truncate"), ("LATEST", "flip")]


@pytest.mark.parametrize("name,how", CORRUPTIONS)
def test_corrupt_latest_checkpoint_falls_back_with_identical_results(reference, name, how):
    stream, root = reference
    out = _copy_run(root, f"corrupt-{name}")
    older, latest = _checkpoints(out)
    assert latest.name == "step-00000014-done-2" and older.name == "step-00000013-done-1"
    _damage(out / "checkpoints" / name if name == "LATEST" else latest / name, how)
    stale = [out / "checkpoints" / ".step-00000015-done-2.x1y2.tmp", out / "adapters" / ".exp_3.a1b2.tmp"]
    for folder in stale:
        folder.mkdir()
        (folder / "half-written").write_text("x")
    (out / ".results.json.k3j4.tmp").write_text("{")

    done = subprocess.run(_cmd(stream, out, "--resume"), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if name != "LATEST":  # the pointer is a hint: checkpoints are chosen by their names and checksums
        assert f"warning: checkpoint {latest} is corrupt" in done.stderr
        assert "resuming from step-00000013-done-1" in done.stderr
    assert not any(p.exists() for p in stale) and not (out / ".results.json.k3j4.tmp").exists()
    ref = _final(root / "ref")
    matrices, scores, adapter = _final(out)
    assert matrices == ref[0] and scores == ref[1]
    assert all((adapter[k] == ref[2][k]).all() for k in ref[2])


def test_no_valid_checkpoint_is_refused_and_nothing_changes(reference):
    stream, root = reference
    out = _copy_run(root, "all-corrupt")
    for checkpoint in _checkpoints(out):
        _damage(checkpoint / "adapter.safetensors", "flip")
    before = _tree(out)
    done = subprocess.run(_cmd(stream, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert re.search(r"^error: .*checkpoints holds no valid checkpoint \(step-00000014-done-2: adapter.safetensors "
                     r"checksum mismatch; step-00000013-done-1: adapter.safetensors checksum mismatch\)",
                     done.stderr, re.M), done.stderr
    assert "Traceback" not in done.stderr
    assert {k: v for k, v in _tree(out).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_legacy_checkpoint_names_without_checksums_still_resume(reference):
    """Checkpoints written before checksums and the done-<n> names (step-<s>-exp-<n>, same n) resume."""
    stream, root = reference
    out = _copy_run(root, "legacy")
    older, latest = _checkpoints(out)
    shutil.rmtree(latest)   # resume from the mid-experience checkpoint, as a run killed there would
    (older / "checksums.json").unlink()
    older.rename(out / "checkpoints" / "step-00000013-exp-1")
    (out / "checkpoints" / "LATEST").write_text("step-00000013-exp-1\n")
    done = subprocess.run(_cmd(stream, out, "--resume"), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout and "step-00000013-exp-1" in done.stdout
    ref = _final(root / "ref")
    matrices, scores, adapter = _final(out)
    assert matrices == ref[0] and scores == ref[1]


def _with_own_stream(root: Path, name: str) -> tuple[Path, Path]:
    """A copy of the finished run and its own copy of the stream file (so it can be edited); a run is
    identified by its stream's content, not the file's path."""
    out = _copy_run(root, name)
    stream = root / f"{name}.yaml"
    stream.write_text(STREAM)
    return out, stream


def test_resume_refuses_a_stream_edited_in_place_naming_keys_and_experiences(reference):
    root = reference[1]
    out, stream = _with_own_stream(root, "edited")
    stream.write_text(STREAM.replace("n: 1000, max_steps: 12", "n: 16, max_steps: 12")
                      .replace("eval: {task: gsm8k, n: 2,", "eval: {task: gsm8k, n: 3,"))
    before = _tree(out)
    done = subprocess.run(_cmd(stream, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "holds a different run (stream" in line
    assert "experience 1 (gsm8k): eval_options.n: 2 -> 3" in line
    assert "experience 2 (mmlu): train.n: 1000 -> 16" in line
    assert _tree(out) == before


def test_rows_of_other_tasks_are_refused(reference):
    """The rows on disk are checked against the stream's tasks too (on top of identity.json's stream)."""
    from clsharelora.benchmarks.stream import load_stream
    from clsharelora.errors import UserError
    from clsharelora.training.rundir import check_results_rows

    root = reference[1]
    stream = root / "retasked.yaml"
    stream.write_text(STREAM.replace("eval: {task: mmlu, n: 4, shots: 1}", "eval: {task: mmlu_pro, n: 4, shots: 1}"))
    with pytest.raises(UserError, match=r"results.json scores tasks \['gsm8k', 'mmlu'\], but the stream's tasks "
                                        r"are \['gsm8k', 'mmlu_pro'\]"):
        check_results_rows(root / "ref", load_stream(str(stream)))
