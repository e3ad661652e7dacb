"""Durability of a run directory, on the tiny model in-process (about a second a run once loaded):
- a row reaches results.json only after the checkpoint that holds it: at every point between two writes of a
  run, each published row is in the checkpoint `--resume` continues from, and a run stopped there resumes
  without scoring a published row again, to the uninterrupted run's results;
- identity.json is the run's first record: a run stopped before its other files still refuses a stream edited
  in place; a directory with config.yaml but no identity is refused, not resumed unchecked; the stream is
  compared by content, not by how its path is spelled; a state.json with a matching checksum but no checkpoint
  state in it is one `error:` line;
- a full disk (a real tmpfs, at several fill levels of bytes and of inodes) is one `error:` line naming the
  path and the free space, exit 2, no temporaries left, the published rows intact, and `--resume` once space
  is freed gives the uninterrupted run's results."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from clsharelora import atomic
from clsharelora.cli import main
from clsharelora.training.checkpoint import Checkpointer, write_checksums
from clsharelora.training.scoring import ScoringPlugin

STREAM = """\
name: dur
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 4, max_steps: 1, max_length: 128}
    eval: {task: gsm8k, n: 1, shots: 0, max_new_tokens: 2}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 4, max_steps: 1, max_length: 128}
    eval: {task: mmlu, n: 2, shots: 0}
"""
ROWS = 3   # row 0 (untrained) and one per experience


class Killed(BaseException):
    """Stands for SIGKILL: raised instead of a chosen write."""


def _run(stream: Path | str, out: Path, *extra: str) -> int:
    # dropout > 0: training draws from the torch RNG, so a wrong RNG restore would change the results
    return main(["run", "--stream", str(stream), "--model", "tiny-llama", "--strategy", "sharelora", "--out",
                 str(out), "--no-progress", "--set", "train.batch_size=2", "--set", "train.global_batch=2",
                 "--set", "adapter.dropout=0.1", *extra])


def _final(run: Path) -> tuple:
    """What must be identical to the uninterrupted run: rows, matrices, the last adapter, every row's items."""
    results = json.loads((run / "results.json").read_text())
    adapter = load_file(str(run / "adapters" / "exp_2" / "adapter_model.safetensors"))
    items = []
    for i in range(ROWS):
        with np.load(run / "items" / f"row_{i}.npz") as data:
            items.append({k: data[k].tolist() for k in data.files})
    return results["scores"], results["matrices"], {k: v.tolist() for k, v in adapter.items()}, items


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("durability")
    stream = root / "stream.yaml"
    stream.write_text(STREAM)
    assert _run(stream, root / "ref") == 0
    return stream, root


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def _published_rows_are_checkpointed(out: Path) -> None:
    """Every row in results.json is in the checkpoint that --resume would continue from."""
    if not (out / "results.json").is_file():
        return
    rows = json.loads((out / "results.json").read_text())["scores"]
    latest = Checkpointer(out).latest()
    saved = _state(latest)["results"]["scores"] if latest else []
    assert saved[:len(rows)] == rows, f"results.json has {len(rows)} rows, the checkpoint {latest} {len(saved)}"


def _writes(monkeypatch, before) -> list[str]:
    """Call `before(path)` ahead of every write of the run (atomic.write_bytes and atomic.directory, which
    every file of a run directory goes through); returns the paths written, in order."""
    seen: list[str] = []
    write_bytes, directory = atomic.write_bytes, atomic.directory

    def hooked_bytes(path, data):
        before(Path(path))
        seen.append(str(path))
        return write_bytes(path, data)

    def hooked_directory(path):
        before(Path(path))
        seen.append(str(path))
        return directory(path)

    monkeypatch.setattr(atomic, "write_bytes", hooked_bytes)
    monkeypatch.setattr(atomic, "directory", hooked_directory)
    return seen


def test_before_every_write_each_published_row_is_in_the_resume_checkpoint(reference, tmp_path, monkeypatch):
    """The states a kill can leave are the states between two writes (each write is atomic): all checked.
    Failed before: ScoringPlugin wrote results.json before ExperienceDone wrote the checkpoint."""
    stream, _ = reference
    out = tmp_path / "run"
    seen = _writes(monkeypatch, lambda path: _published_rows_are_checkpointed(out))
    assert _run(stream, out) == 0
    _published_rows_are_checkpointed(out)
    assert sum(Path(p).name == "results.json" for p in seen) >= ROWS and len(seen) > 20


def _kill_then_resume(stream: Path, out: Path, monkeypatch, name: str, occurrence: int) -> tuple[list, int, int]:
    """Stop the run instead of the `occurrence`-th write of a file or folder called `name`; resume it.
    Returns the rows published when it stopped, the rows in the checkpoint to resume from, and the rows the
    resumed run scored."""
    count = {"n": 0}

    def before(path: Path):
        if path.name == name:
            count["n"] += 1
            if count["n"] == occurrence:
                raise Killed(f"{name} #{occurrence}")

    with monkeypatch.context() as patch:
        _writes(patch, before)
        with pytest.raises(Killed):
            _run(stream, out)
    published = json.loads((out / "results.json").read_text())["scores"] if (out / "results.json").is_file() else []
    latest = Checkpointer(out).latest()
    checkpointed = len(_state(latest)["results"]["scores"]) if latest else 0
    scored = []
    original = ScoringPlugin.score
    with monkeypatch.context() as patch:
        patch.setattr(ScoringPlugin, "score", lambda self, model, **kw: scored.append(1) or original(self, model, **kw))
        assert _run(stream, out, "--resume") == 0
    return published, checkpointed, len(scored)


# (name, occurrence): the write instead of which the run stops. LATEST #2 and results.json #2 lie between the
# checkpoint after experience 1 and its row's publication; exp_2 #1 after row 1 is published, before the
# adapter of experience 2. Every other point: the slow test below.
KILL_POINTS = [("LATEST", 2), ("results.json", 2), ("exp_2", 1)]


@pytest.mark.parametrize("name,occurrence", KILL_POINTS)
def test_killed_between_checkpoint_and_row_resumes_without_rescoring_a_published_row(
        reference, tmp_path, monkeypatch, name, occurrence):
    """Failed before (results.json #2: row 0 published without a checkpoint, scored again on resume)."""
    stream, root = reference
    published, checkpointed, scored = _kill_then_resume(stream, tmp_path / "run", monkeypatch, name, occurrence)
    assert checkpointed >= len(published) and scored == ROWS - checkpointed, (len(published), checkpointed, scored)
    final = _final(tmp_path / "run")
    assert final[0][:len(published)] == published
    assert final == _final(root / "ref")


@pytest.mark.slow
def test_killed_before_any_write_resumes_to_the_uninterrupted_results(reference, tmp_path, monkeypatch):
    """Every write of a run in turn (about 30 kills and resumes)."""
    stream, root = reference
    order = _writes(monkeypatch, lambda path: None)
    assert _run(stream, tmp_path / "count") == 0
    monkeypatch.undo()
    names = [Path(p).name for p in order]
    for k, name in enumerate(names):
        out = tmp_path / f"kill-{k}"
        published, checkpointed, scored = _kill_then_resume(stream, out, monkeypatch, name, names[:k + 1].count(name))
        assert checkpointed >= len(published) and scored == ROWS - checkpointed, (k, name)
        assert _final(out) == _final(root / "ref"), (k, name)


# ------------------------------------------------------------------------------------------------ identity
def test_a_run_stopped_before_its_config_still_refuses_a_stream_edited_in_place(tmp_path, monkeypatch, capsys):
    """identity.json comes first. Failed before: config.yaml came first, and a run stopped before
    identity.json was resumed as an old-format directory, accepting the edited stream."""
    stream = tmp_path / "stream.yaml"
    stream.write_text(STREAM)
    out = tmp_path / "run"

    def before(path: Path):
        if path.name == "config.yaml":
            raise Killed("config.yaml")

    with monkeypatch.context() as patch:
        _writes(patch, before)
        with pytest.raises(Killed):
            _run(stream, out)
    assert (out / "identity.json").is_file()
    stream.write_text(STREAM.replace("n: 4, max_steps: 1", "n: 3, max_steps: 1", 1))
    capsys.readouterr()
    assert _run(stream, out, "--resume") == 2
    err = _one_error(capsys.readouterr().err)
    assert "holds a different run (stream" in err and "train.n: 4 -> 3" in err


def test_a_run_stopped_while_writing_its_identity_starts_afresh_on_resume(reference, tmp_path, monkeypatch):
    stream, root = reference
    out = tmp_path / "run"

    def before(path: Path):
        if path.name == "identity.json":
            (path.parent / ".identity.json.x1y2.tmp").write_text("{")   # what a SIGKILL mid-write leaves
            raise Killed("identity.json")

    with monkeypatch.context() as patch:
        _writes(patch, before)
        with pytest.raises(Killed):
            _run(stream, out)
    assert _run(stream, out, "--resume") == 0
    assert not (out / ".identity.json.x1y2.tmp").exists()
    assert _final(out) == _final(root / "ref")


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(root / "ref", out)
    return out


def _one_error(err: str) -> str:
    """The one `error:` line of a refused command (other lines are notes printed before the refusal)."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_run_without_identity_is_refused_not_resumed_unchecked(reference, tmp_path, capsys):
    """Failed before: a directory with config.yaml and no identity.json resumed on its config alone."""
    stream, root = reference
    out = _copy(root, tmp_path)
    (out / "identity.json").unlink()
    capsys.readouterr()
    assert _run(stream, out, "--resume") == 2
    err = _one_error(capsys.readouterr().err)
    assert err.startswith(f"error: output dir {out} holds a run without identity.json")
    assert "another --out" in err


def test_the_same_stream_by_a_relative_path_resumes(reference, tmp_path, monkeypatch):
    """Failed before: 'holds a different run (config differs: stream: ...)'."""
    stream, root = reference
    out = _copy(root, tmp_path)
    monkeypatch.chdir(stream.parent)
    assert _run(stream.name, out, "--resume") == 0
    assert _final(out) == _final(root / "ref")


@pytest.mark.parametrize("state", ["[1, 2]", '{"position": {"exp_index": "x"}}', '{"results": null}'])
def test_a_state_json_with_a_matching_checksum_but_no_state_is_one_error(reference, tmp_path, capsys, state):
    """Failed before: KeyError / AttributeError traceback on --resume."""
    stream, root = reference
    out = _copy(root, tmp_path)
    latest = Checkpointer(out).latest()
    (latest / "state.json").write_text(state)
    (latest / "checksums.json").unlink()
    write_checksums(latest)
    capsys.readouterr()
    assert _run(stream, out, "--resume") == 2
    err = _one_error(capsys.readouterr().err)
    assert err.startswith(f"error: checkpoint {latest}: state.json is not a checkpoint state")


# ------------------------------------------------------------------------------------------------ disk full
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs with at most 200 inodes (root only; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=200", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path, *, leave_bytes: int | None = None, leave_inodes: int | None = None) -> list[Path]:
    """Fill the disk until `leave_bytes` bytes or `leave_inodes` inodes are free; returns the fillers."""
    fillers = []
    if leave_bytes is not None:
        st = os.statvfs(disk)
        filler = disk / "filler"
        with open(filler, "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - leave_bytes))
        fillers.append(filler)
    if leave_inodes is not None:
        for i in range(os.statvfs(disk).f_favail - leave_inodes):
            fillers.append(disk / f"filler-{i}")
            fillers[-1].touch()
    return fillers


# free bytes / free inodes left for the run (its directory needs ~0.7 MB and ~45 inodes), and the write each
# stops it at: the identity, row 0's checkpoint, experience 1's checkpoint, row 0's items, experience 1's adapter
FILL_LEVELS = [({"leave_bytes": 8 << 10}, "identity.json"),
               ({"leave_bytes": 120 << 10}, "checkpoints/step-00000000-done-0"),
               ({"leave_bytes": 400 << 10}, "checkpoints/step-00000001-done-1"),
               ({"leave_inodes": 6}, "items/row_0.npz"),
               ({"leave_inodes": 24}, "adapters/exp_1")]


@pytest.mark.parametrize("level,where", FILL_LEVELS,
                         ids=lambda x: "-".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else "")
def test_a_full_disk_is_one_error_loses_nothing_and_resume_finishes_the_run(reference, small_disk, capsys, level,
                                                                            where):
    """Failed before: tracebacks (OSError ENOSPC, SafetensorError, torch's 'unexpected pos')."""
    stream, root = reference
    out = small_disk / "run"
    fillers = _fill(small_disk, **level)
    capsys.readouterr()
    assert _run(stream, out) == 2
    err = _one_error(capsys.readouterr().err)
    assert err.startswith(f"error: no space left on the disk writing {out / where} ("), err
    assert " inodes free there)" in err and "--resume" in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")] if out.exists() else True
    if out.exists():
        _published_rows_are_checkpointed(out)
    for filler in fillers:
        filler.unlink()
    assert _run(stream, out, "--resume") == 0   # stopped before identity.json: resume starts it
    assert _final(out) == _final(root / "ref")


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temporary(small_disk):
    """The writer of results.json, the R CSVs, items and identity: the old content stays, nothing else."""
    from clsharelora.errors import DiskFull

    target = small_disk / "results.json"
    atomic.write_json(target, {"scores": [[1]]})
    _fill(small_disk, leave_bytes=16 << 10)
    with pytest.raises(DiskFull, match=rf"^no space left on the disk writing {target} \(.* inodes free there\)"):
        atomic.write_json(target, {"scores": [[1], [2] * 100_000]})
    assert json.loads(target.read_text()) == {"scores": [[1]]}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "results.json"]


def test_a_report_on_a_full_disk_is_one_error(reference, small_disk, capsys):
    """Failed before: exit 1 and the bare OSError text."""
    _, root = reference
    _fill(small_disk, leave_bytes=60 << 10)
    capsys.readouterr()
    assert main(["report", str(root / "ref"), "--out", str(small_disk / "report")]) == 2
    err = _one_error(capsys.readouterr().err)
    assert err.startswith(f"error: no space left on the disk writing the report under {small_disk / 'report'} (")
    assert " inodes free there); free some space" in err


def test_disk_full_is_recognised_through_library_errors():
    """torch.save into a file object raises RuntimeError with the OSError as its context; safetensors quotes
    the OS message."""
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as exc:
        assert atomic.is_no_space(exc)
    assert atomic.is_no_space(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not atomic.is_no_space(RuntimeError("unexpected pos 704 vs 598"))
