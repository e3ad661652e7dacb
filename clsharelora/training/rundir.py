"""The run directory's integrity: where it may be, who writes into it (an exclusive lock), what run it holds
(its identity: config, stream content, data file hashes; identity.json, the run's first record) and whether
`--resume` may continue it.

Nothing here creates anything until `RunDirectory.claim`, which the runner calls only after every input has
been validated.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .. import atomic
from ..benchmarks.stream import Stream
from ..config import RunConfig
from ..errors import ConfigError, UserError
from .checkpoint import Checkpointer

LOCK = ".lock"
IDENTITY = "identity.json"
CONFIG = "config.yaml"


# ------------------------------------------------------------------------------------------------ names
def default_name(stream: Stream, adapter, cl) -> str:
    """<stream>-<adapter>[-<variant>][-<cl>]: the variant and CL method appear when not their defaults, so
    `--cl replay` or `--variant share_b` never lands in the directory of the default run."""
    name = f"{stream.name}-{adapter.name}"
    variant = adapter.options.get("variant")
    if variant is not None and variant != type(adapter).defaults.get("variant"):
        name += f"-{variant}"
    if cl.name != RunConfig().cl["name"]:
        name += f"-{cl.name}"
    return name


# ------------------------------------------------------------------------------------------- location
def check_location(run_dir: Path) -> None:
    """--out must be a directory that exists or can be created here, and that this process can write."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a directory (existing or to be created)")
    ancestor = run_dir
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise ConfigError(f"--out {run_dir}: {ancestor} is a dangling symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--out {run_dir} lies under {ancestor}, which is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK) or not _can_create_in(ancestor):
        what = "is" if ancestor == run_dir else f"lies under {ancestor}, which is"
        raise ConfigError(f"--out {run_dir} {what} not writable by this process; choose a writable directory")


def _can_create_in(folder: Path) -> bool:
    """access(2) says yes to root everywhere but read-only mounts; /proc and /sys still refuse: try it
    (a directory created and removed at once; nothing remains)."""
    probe = folder / f".clsharelora-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except FileExistsError:
        return True
    except OSError:
        return False
    probe.rmdir()
    return True


# ------------------------------------------------------------------------------------------------ lock
def _holder_text(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


def check_not_locked(run_dir: Path) -> None:
    """Fail fast, before any data is loaded, when another live process holds the run directory's lock."""
    lock_path = run_dir / LOCK
    if not lock_path.is_file():
        return
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(_in_use(run_dir, lock_path)) from None
        raise
    finally:
        os.close(fd)  # closing releases a lock we may just have taken


def _in_use(run_dir: Path, lock_path: Path) -> str:
    return (f"run directory {run_dir} is in use by {_holder_text(lock_path)} (lock {lock_path}); wait for that "
            f"run to end, or choose another --out")


class RunLock:
    """flock(2) on <run dir>/.lock: exclusive while this process lives. The kernel drops it when the holder
    exits or is killed, so the lock file of a dead process never blocks; its content (pid, host, start
    time) only names the holder in the second process's error."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(_in_use(self.path.parent, self.path)) from None
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# -------------------------------------------------------------------------------------------- identity
def resolved_config_dict(config: RunConfig) -> dict:
    """What identifies a run: its config without the output location, without the paths of the stream file
    and the data root (the stream's parsed content and the data files' hashes identify those, so
    `streams/x.yaml` and `/abs/streams/x.yaml` are the same run), and without train.engine at its default
    (ddp): runs written before that key existed were DDP runs and still resume; an fsdp run keeps it, so it
    cannot be resumed under the other engine (its checkpoints hold optimizer state keyed by name)."""
    return _identifying(config.to_dict())


def _identifying(data: dict) -> dict:
    """A config dict (resolved, or read back from an identity.json) as it identifies a run (resolved_config_dict)."""
    for where in ("out", "stream", "data_root"):
        data.pop(where, None)
    train = data.get("train")
    if isinstance(train, dict) and train.get("engine") == "ddp":
        train.pop("engine")
    return data


def stream_content(stream: Stream) -> dict:
    """The parsed stream (what training and scoring use), independent of comments and formatting."""
    data = dataclasses.asdict(stream)
    data.pop("path", None)
    return json.loads(json.dumps(data))  # tuples -> lists, as they come back from JSON


def data_files(stream: Stream, data_root: Path) -> list[Path]:
    """The files under the data root that the stream's benchmarks and tasks read: every file of each
    benchmark's folder (evaluators also read shot pools), plus any training file named by an option."""
    from ..data import _MODULES

    names = {e.train.benchmark for e in stream.experiences} | {e.task for e in stream.experiences}
    files: set[Path] = set()
    for name in sorted(names):
        folder = data_root / name
        if folder.is_dir():
            files.update(p for p in folder.rglob("*") if p.is_file())
    for e in stream.experiences:
        module = _MODULES.get(e.train.benchmark)
        for split in e.train.split.split("+"):
            try:
                source = module.file_source(data_root, split, **e.train.options) if module else None
            except (TypeError, UserError):
                source = None
            if source is not None and Path(source).is_file():
                files.add(Path(source))
    return sorted(files)


def identity(config: RunConfig, stream: Stream, data_root: Path) -> dict:
    stream_path = Path(stream.path)
    files = {}
    for path in data_files(stream, data_root):
        try:
            key = str(path.relative_to(data_root))
        except ValueError:
            key = str(path.resolve())
        files[key] = atomic.sha256_file(path)
    return {"config": resolved_config_dict(config),
            "stream": {"path": str(stream_path), "sha256": atomic.sha256_file(stream_path)
                       if stream_path.is_file() else None, "content": stream_content(stream)},
            "data": {"root": str(data_root), "sha256": files}}


def dotted_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'train.lr: 0.0002 -> 0.001' for every leaf that differs (lists compared item by item)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where}: added ({_short(new[key])})")
            elif key not in new:
                out.append(f"{where}: removed (was {_short(old[key])})")
            else:
                out += dotted_differences(old[key], new[key], where)
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            where = f"{prefix}[{i}]"
            if i >= len(old):
                out.append(f"{where}: added ({_short(new[i])})")
            elif i >= len(new):
                out.append(f"{where}: removed (was {_short(old[i])})")
            else:
                out += dotted_differences(old[i], new[i], where)
        return out
    return [] if old == new else [f"{prefix}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def stream_differences(old: dict, new: dict) -> list[str]:
    """Differences of two parsed streams, experiences named by position and name: 'experience 2 (mmlu):
    train.n: 8 -> 16'."""
    out = dotted_differences({k: v for k, v in old.items() if k != "experiences"},
                             {k: v for k, v in new.items() if k != "experiences"})
    old_exps, new_exps = old.get("experiences", []), new.get("experiences", [])
    for i in range(max(len(old_exps), len(new_exps))):
        if i >= len(old_exps):
            out.append(f"experience {i + 1} ({new_exps[i]['name']}): added")
        elif i >= len(new_exps):
            out.append(f"experience {i + 1} ({old_exps[i]['name']}): removed")
        else:
            out += [f"experience {i + 1} ({old_exps[i]['name']}): {d}"
                    for d in dotted_differences(old_exps[i], new_exps[i])]
    return out


def _refuse(run_dir: Path, what: str, differences: list[str]) -> UserError:
    differences = sorted(differences, key=lambda d: " -> " not in d)  # changed values before added/removed keys
    shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
    return UserError(f"output dir {run_dir} holds a different run ({what} differs: {shown}); choose another "
                     f"--out, or restore the original to resume")


# ----------------------------------------------------------------------------------------------- checks
def holds_run(run_dir: Path) -> bool:
    """identity.json is the run's first record (claim writes it before anything else); config.yaml alone is
    a run of a version before identities, or one whose identity was lost: check_existing refuses both."""
    return (run_dir / IDENTITY).is_file() or (run_dir / CONFIG).is_file()


def _is_empty(run_dir: Path) -> bool:
    """Nothing but the lock and temporaries of interrupted atomic writes (claim removes those): a run killed
    (or out of space) before its identity.json was complete starts afresh."""
    return not run_dir.exists() or all(p.name == LOCK or (p.name.startswith(".") and p.name.endswith(".tmp"))
                                       for p in run_dir.iterdir())


def check_existing(run_dir: Path, config: RunConfig, ident: dict, *, resume: bool, name_given: bool = True) -> bool:
    """Read-only: may this run start (False) or continue (True) in run_dir? Compares the saved config
    (dotted keys), the stream's parsed content (experiences and keys) and the data files' hashes."""
    if _is_empty(run_dir):
        if resume and not (run_dir / LOCK).is_file():   # a lock: a run was started here, stopped before its identity
            raise UserError(f"--resume: {run_dir} holds no run to resume")
        return False
    if not holds_run(run_dir):
        raise UserError(f"output dir {run_dir} is not empty and holds no clsharelora run; choose another --out")
    if not resume:
        raise UserError(f"output dir {run_dir} already holds a run: add --resume to continue it, "
                        f"or choose another --out")
    saved = _saved_identity(run_dir)
    if saved is None:
        raise UserError(f"output dir {run_dir} holds a run without {IDENTITY} (written by a version before run "
                        f"identities, or its identity was removed): its stream and data cannot be checked, so it "
                        f"is not resumed; start the run in another --out (this one stays readable by `report`)")
    old = _identifying(dict(saved["config"]))
    new = dict(ident["config"])
    if not name_given:  # the default name may have changed between versions; a given one must match
        new["name"] = old.get("name")
    differing = dotted_differences(old, new)
    if differing:
        raise _refuse(run_dir, "config", differing)
    differing = stream_differences(saved["stream"]["content"], ident["stream"]["content"])
    if differing:
        raise _refuse(run_dir, f"stream {ident['stream']['path']}", differing)
    old_files, new_files = saved["data"]["sha256"], ident["data"]["sha256"]
    changed = [f"{name}: {'removed' if name not in new_files else 'added' if name not in old_files else 'changed'}"
               for name in sorted(set(old_files) | set(new_files)) if old_files.get(name) != new_files.get(name)]
    if changed:
        raise _refuse(run_dir, f"data under {ident['data']['root']}", changed)
    return True


def check_results_rows(run_dir: Path, stream: Stream) -> None:
    """Read-only: the rows already in results.json score the stream's tasks, in its order."""
    if (run_dir / "results.json").is_file():
        check_rows(str(run_dir / "results.json"), _json(run_dir / "results.json"), stream)


def _saved_identity(run_dir: Path) -> dict | None:
    path = run_dir / IDENTITY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not all(isinstance(part, dict) for part in (data["config"], data["stream"]["content"],
                                                         data["data"]["sha256"])):
            raise TypeError
        return data
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: unreadable or not a run identity; cannot check what run this is (choose "
                        f"another --out)") from None


def check_rows(where: str, results: dict, stream: Stream) -> None:
    """Restored rows must score exactly the stream's tasks, in its order (one column of R per task)."""
    tasks = stream.tasks
    if results.get("tasks") not in (None, tasks):
        raise UserError(f"{where} scores tasks {results.get('tasks')}, but the stream's tasks are {tasks}; "
                        f"refusing to mix them in one R matrix (choose another --out)")
    for i, row in enumerate(results.get("scores", [])):
        if [cell.get("task") for cell in row] != tasks:
            raise UserError(f"{where}: row {i} scores {[cell.get('task') for cell in row]}, but the stream's "
                            f"tasks are {tasks}; refusing to mix them in one R matrix (choose another --out)")


def check_rows_unchanged(run_dir: Path, checkpoint_results: dict) -> None:
    """results.json may never hold rows that the checkpoint contradicts (completed results are final)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return
    try:
        on_disk = json.loads(path.read_text()).get("scores", [])
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}); refusing to overwrite it") from None
    saved = checkpoint_results.get("scores", [])
    for i, row in enumerate(on_disk[:len(saved)]):
        if row != saved[i]:
            raise UserError(f"{path}: row {i} differs from the checkpoint; refusing to overwrite finished results")


# -------------------------------------------------------------------------------------------- claiming
@dataclasses.dataclass
class Claim:
    run_dir: Path
    resume_from: Path | None
    cleaned: list[str]


@contextmanager
def claim(run_dir: Path, config: RunConfig, ident: dict, stream: Stream, *, resume: bool,
          name_given: bool = True, is_main: bool = True, barrier=lambda: None) -> Iterator[Claim]:
    """Create the run directory, hold its lock for the block, check it again under the lock (another process
    may have started it since `check_existing`), prune what interrupted writes left, choose the checkpoint
    to resume from, and write the run's config, environment and identity. The main process does all of it;
    the other ranks of a multi-process run wait for it (`barrier`) and then read the same checkpoint."""
    from .environment import environment

    lock = None
    try:
        resume_from, cleaned = None, []
        if is_main:
            with atomic.space_checked(run_dir / LOCK):
                run_dir.mkdir(parents=True, exist_ok=True)
                lock = RunLock(run_dir).acquire()
            continuing = check_existing(run_dir, config, ident, resume=resume, name_given=name_given)
            for folder in (run_dir, run_dir / "checkpoints", run_dir / "adapters", run_dir / "items"):
                cleaned += [f"{folder.name}/{name}" for name in atomic.recover(folder)]
            if cleaned:
                print(f"note: removed {len(cleaned)} leftover(s) of interrupted writes in {run_dir}: "
                      f"{', '.join(cleaned[:5])}", file=sys.stderr, flush=True)
            if continuing:
                check_results_rows(run_dir, stream)
                resume_from = Checkpointer(run_dir).latest(remove_corrupt=True)
                if resume_from is not None:
                    check_rows(str(resume_from), _state_results(resume_from), stream)
            # the identity first: it is what makes this directory a run (holds_run); a kill or a full disk
            # before it is complete leaves a directory that check_existing treats as empty
            atomic.write_json(run_dir / IDENTITY, ident)
            atomic.write_text(run_dir / CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))
            atomic.write_json(run_dir / "environment.json", environment())
        barrier()
        if not is_main and resume:  # the main process has checked the directory and removed corrupt checkpoints
            resume_from = Checkpointer(run_dir).latest()
        yield Claim(run_dir=run_dir, resume_from=resume_from, cleaned=cleaned)
    finally:
        if lock is not None:
            lock.release()


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__})") from None


def _state_results(checkpoint: Path) -> dict:
    return Checkpointer.read_state(checkpoint)["results"]
