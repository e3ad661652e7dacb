"""Start one program in the sandbox, pump its output, and decide its verdict.

The verdict comes only from the result pipe written by sandbox/inside.py (b"S" after set-up, then a
per-run random token after the program text ran to its end) and the exit status: never from what the
program prints. stdout/stderr are read continuously through pipes; their head and tail are kept and the
rest discarded, so output volume cannot fail a program."""

from __future__ import annotations

import math
import os
import pwd
import secrets
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ...errors import ConfigError
from . import layers as _layers
from . import stale
from .capture import HeadTail
from .cgroups import ProgramCgroup
from .remove import remove_tree

STATUSES = ("passed", "failed", "timeout", "error")
_INSIDE = (Path(__file__).with_name("inside.py")).read_text(encoding="utf-8")
_NOFILE = 256
_RESULT_CAP = 4096
UID_BASE = 2**30  # programs' own uids are UID_BASE .. 2*UID_BASE-1: no account has one
_GRACE_S = 1.0  # after the program ended (or was killed): how long stray holders of its pipes are waited for


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program. status: passed | failed | timeout | error (error = the harness could not
    run it; the program is not to blame). reason: one short line. stdout/stderr: head and tail, decoded;
    stdout_bytes/stderr_bytes: how much the program wrote in all."""

    status: str
    reason: str
    returncode: int | None
    duration_s: float
    stdout: str
    stderr: str
    isolation: str
    stdout_bytes: int = 0
    stderr_bytes: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _check_limits(timeout, memory_mb, max_processes, max_file_mb, max_output) -> None:
    if isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"sandbox timeout must be a positive number of seconds, got {timeout!r}")
    for name, value, low in (("memory_mb", memory_mb, 64), ("max_processes", max_processes, 1),
                             ("max_file_mb", max_file_mb, 1), ("max_output", max_output, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"sandbox {name} must be an integer >= {low}, got {value!r}")


def _fresh_uid() -> int:
    """A uid no account has: the program's processes and files are its alone (RLIMIT_NPROC counts per uid,
    so without cgroups it caps this program's processes and nobody else's)."""
    while True:
        uid = UID_BASE + secrets.randbelow(2**30)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid


def _env(home: str) -> dict[str, str]:
    """Nothing from the harness' environment (tokens, HOME secrets, proxies) reaches the program."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "OMP_NUM_THREADS": "1"}


def _stdin_file(data: bytes) -> int:
    """A descriptor holding `data` with no name anywhere (memfd; else an unlinked temp file)."""
    try:
        fd = os.memfd_create("clsl-sbx-stdin", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(prefix="clsl-sbx-in-")
        os.unlink(path)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of a program's own uid (where no PID namespace or cgroup collects them)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    line = next(ln for ln in f if ln.startswith("Uid:"))
                if int(line.split()[1]) == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except (OSError, StopIteration, ValueError):
                pass


_SEPARATORS = ("\n", "\t", "\x1e", "\x1f")


def _header(cfg: dict) -> bytes:
    """The set-up's header in inside.py's `key<TAB>value` format (see its docstring)."""
    def text(value) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, (list, tuple)):
            return "\x1e".join("\x1f".join(v) if isinstance(v, (list, tuple)) else v for v in value)
        return str(value)

    lines = []
    for key, value in cfg.items():
        v = text(value)
        flat = [x for item in (value if isinstance(value, (list, tuple)) else [value])
                for x in (item if isinstance(item, (list, tuple)) else [item])]
        if any(sep in str(x) for x in flat for sep in _SEPARATORS):
            raise OSError(f"sandbox: {key} {value!r} contains a control character the set-up header cannot carry")
        lines.append(f"{key}\t{v}")
    return "\n".join(lines).encode("utf-8")


def _signal_name(number: int) -> str:
    """SIGKILL, SIGRTMIN+6, ...: any signal a program can die of (signal.Signals lacks the real-time ones)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _pump(proc: subprocess.Popen, fds: dict[int, HeadTail], deadline: float) -> bool:
    """Read every fd until EOF (or the grace period after the program ended); True if it timed out."""
    sel = selectors.DefaultSelector()
    for fd in fds:
        sel.register(fd, selectors.EVENT_READ)
    timed_out, grace_end = False, None
    try:
        while sel.get_map():
            now = time.monotonic()
            if grace_end is None:
                if proc.poll() is not None:
                    grace_end = now + _GRACE_S
                elif now >= deadline:
                    timed_out, grace_end = True, now + _GRACE_S
                    _kill_group(proc)
            elif now >= grace_end:
                break
            wait = min((grace_end if grace_end is not None else deadline) - now, 0.1)
            for key, _ in sel.select(max(wait, 0)):
                data = os.read(key.fd, 1 << 16)
                if data:
                    fds[key.fd].feed(data)
                else:
                    sel.unregister(key.fd)
    finally:
        sel.close()
    return timed_out


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare dies; --kill-child and the PID namespace take the rest
    except (ProcessLookupError, PermissionError):
        pass


def _run(iso: _layers.Isolation, source: str, *, timeout: float, memory_mb: int, max_processes: int,
         max_file_mb: int, max_output: int, guard: bool) -> ExecResult:
    start = time.monotonic()
    try:  # model output is arbitrary text: a lone surrogate is the program's failure, not the harness'
        code = source.encode("utf-8")
    except UnicodeEncodeError as e:
        return ExecResult("failed", f"program text is not valid Unicode: {e.reason} {source[e.start:e.end]!r} "
                          f"at character {e.start}", None, 0.0, "", "", iso.description)
    token = secrets.token_hex(16).encode()
    uid = _fresh_uid() if iso.own_uid else None
    cg = workdir = None
    opened: list[int] = []

    def error(reason: str) -> ExecResult:
        return ExecResult("error", reason, None, time.monotonic() - start, "", "", iso.description)

    try:
        if iso.cgroup:
            try:
                cg = ProgramCgroup.create(iso.cgroup, memory_mb * 2**20, max_processes)
            except OSError as e:
                return error(f"could not create the program's cgroup: {e}")
        if iso.pivot:
            cwd, home = "/", "/sandbox"
        else:
            workdir = tempfile.mkdtemp(prefix=f"{stale.WORKDIR_PREFIX}{os.getpid()}-")
            if uid is not None:
                os.chown(workdir, uid, uid)
            cwd = home = workdir
        result_r, result_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        opened += [result_r, result_w, out_r, out_w, err_r, err_w]
        header = _header({
            "result_fd": result_w, "uid": uid, "gid": uid, "guard": guard,
            "cgroup_procs": list(cg.procs) if cg else [],
            "mountpoint": _layers.mountpoint() if iso.pivot else "",
            "binds": list(iso.binds), "links": list(iso.links),
            "tmpfs_bytes": memory_mb * 2**18, "memory_bytes": memory_mb * 2**20,
            "cpu_s": math.ceil(timeout) + 1, "nproc": max_processes, "fsize_bytes": max_file_mb * 2**20,
            "nofile": _NOFILE, "source_bytes": len(code)})
        stdin = _stdin_file(len(header).to_bytes(8, "big") + header + token + code)
        opened.append(stdin)
        argv = [*iso.prefix, iso.python, "-I", "-S", "-c", _INSIDE]
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=_env(home), stdin=stdin, stdout=out_w, stderr=err_w,
                                    pass_fds=(result_w,), start_new_session=True, close_fds=True)
        except OSError as e:
            return error(f"could not start the sandbox: {e}")
        for fd in (result_w, out_w, err_w, stdin):
            os.close(fd)
            opened.remove(fd)
        out, err, result = HeadTail(max_output), HeadTail(max_output), HeadTail(_RESULT_CAP)
        timed_out = _pump(proc, {out_r: out, err_r: err, result_r: result}, start + timeout)
        _kill_group(proc)
        rc = proc.wait()
        if uid is not None and not iso.pivot:
            _kill_uid(uid)
        duration = time.monotonic() - start
        oom = cg.oom_kills() if cg else 0
        stdout, stderr = out.text(), err.text()
        # The set-up writes b"S" before any program code runs, so the first byte is always its own; after
        # that the program holds the same descriptor (it runs in the process that must write the token), so
        # anything beyond exactly S + token is the program's doing and fails it, whatever its volume.
        reported = bytes(result.head + result.tail) if result.total <= _RESULT_CAP else None
        if timed_out:
            status, reason = "timeout", f"wall-clock timeout after {timeout:g}s"
        elif bytes(result.head[:1]) != b"S":  # the program never ran: set-up failed
            status, reason = "error", f"sandbox set-up failed: {_last_line(stderr) or f'exit code {rc}'}"
        elif rc == 0 and reported == b"S" + token:
            status, reason = "passed", "passed"
        elif oom:
            status, reason = "failed", f"memory limit of {memory_mb} MiB (all its processes together) exceeded"
        elif rc < 0:  # unshare re-raises its child's fatal signal, so this is the program's
            if -rc == signal.SIGXCPU:
                status, reason = "timeout", f"CPU limit of {math.ceil(timeout) + 1}s exceeded"
            else:
                status, reason = "failed", f"killed by {_signal_name(-rc)}" + (
                    f": {_last_line(stderr)}" if stderr else "")
        elif rc == 0 and result.total > 1:
            status, reason = "failed", f"program wrote {result.total - 1} bytes into the sandbox's verdict descriptor"
        elif rc == 0:
            status, reason = "failed", "program exited before the tests finished"
        else:
            status, reason = "failed", _last_line(stderr) or f"exit code {rc}"
        return ExecResult(status, reason, rc, duration, stdout, stderr, iso.description, out.total, err.total)
    finally:
        for fd in opened:
            os.close(fd)
        if cg is not None:
            cg.remove()
        if workdir is not None:
            remove_tree(workdir)


def probe(iso: _layers.Isolation) -> bool:
    """Does `iso` start a program that runs the standard library (hashlib's C library included)?"""
    try:
        res = _run(iso, _layers.PROBE_SRC, timeout=30, memory_mb=1024, max_processes=64, max_file_mb=8,
                   max_output=4096, guard=True)
    except OSError:
        return False
    return res.status == "passed" and res.stdout.startswith("ok d41d8cd98f00b204e9800998ecf8427e")


def isolation(refresh: bool = False) -> _layers.Isolation:
    return _layers.isolation(refresh)


def run_program(source: str, *, timeout: float = 10.0, memory_mb: int = 1024, max_processes: int = 64,
                max_file_mb: int = 8, max_output: int = 16_384, guard: bool = True) -> ExecResult:
    """Run `source` as a fresh Python program in the sandbox and report how it ended.

    memory_mb and max_processes hold for all the program's processes together where cgroups are
    available (per process otherwise, see docs/sandbox.md); max_file_mb caps each file it writes;
    max_output is how many bytes of stdout and of stderr are kept (head + tail). `guard=False` turns off
    the in-interpreter reliability guard (tests use it to check that the OS layers hold on their own)."""
    _check_limits(timeout, memory_mb, max_processes, max_file_mb, max_output)
    if not isinstance(source, str):
        raise ConfigError(f"sandbox program must be a str, got {type(source).__name__}")
    return _run(_layers.isolation(), source, timeout=timeout, memory_mb=memory_mb, max_processes=max_processes,
                max_file_mb=max_file_mb, max_output=max_output, guard=guard)


def run_many(programs: Iterable[str], *, workers: int | None = None, timeout: float = 10.0,
             progress=None, **limits) -> list[ExecResult]:
    """Run programs in parallel (threads, each waiting on its own sandboxed process); results keep the
    input order. `progress`: optional callable(done, total). `limits`: see run_program."""
    programs = list(programs)
    if workers is None:
        workers = max(1, min(8, os.cpu_count() or 1))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"sandbox workers must be a positive integer, got {workers!r}")
    _check_limits(timeout, limits.get("memory_mb", 1024), limits.get("max_processes", 64),
                  limits.get("max_file_mb", 8), limits.get("max_output", 16_384))
    _layers.isolation()  # probe once, before the threads start
    done = 0
    lock = threading.Lock()

    def one(src: str) -> ExecResult:
        nonlocal done
        res = run_program(src, timeout=timeout, **limits)
        if progress is not None:
            with lock:
                done += 1
                progress(done, len(programs))
        return res

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, programs))
