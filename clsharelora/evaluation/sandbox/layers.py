"""Which isolation this machine gives a program, probed once per harness process, strongest first.

With root: new network, PID, mount, IPC and UTS namespaces (`unshare`), a pivot into a minimal root on a
private tmpfs, a fresh uid per program, and a cgroup per program (v2, else v1); then the same without
cgroups; then, without `unshare`, only the uid and the cgroup. Without root: an unprivileged user
namespace with the same namespaces and minimal root (no uid of its own). Last resort: a plain process.
`no_new_privs`, rlimits, the wall-clock timeout, the clean environment and the reliability guard always apply.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

from . import cgroups, stale

_NAMESPACES = ("--net", "--pid", "--ipc", "--uts", "--mount", "--fork", "--kill-child")
_NS_LAYERS = ("netns", "pidns", "mountns", "ipcns", "utsns", "private-root")


@dataclass(frozen=True)
class Isolation:
    """How programs are started here. prefix: argv before the interpreter. pivot: into a minimal root on a
    private tmpfs (needs a mount namespace in which we are root). own_uid: each program gets a uid of its
    own. cgroup: 'v2' | 'v1' | None. binds/links: what of the host the minimal root shows (read-only)."""

    prefix: tuple[str, ...]
    python: str
    pivot: bool
    own_uid: bool
    cgroup: str | None
    layers: tuple[str, ...]
    binds: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()

    @property
    def description(self) -> str:
        return "+".join(self.layers) or "process-only"


def system_view() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(read-only bind mounts, symlinks) of the minimal root: the system library/binary directories, the
    harness interpreter's installation (for the standard library) and the dynamic linker's cache."""
    binds: list[str] = []
    links: list[tuple[str, str]] = []
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr"):
        path = "/" + top
        if os.path.islink(path):
            links.append((top, os.readlink(path)))
        elif os.path.isdir(path):
            binds.append(path)
    for prefix in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}:
        if prefix != "/" and not any(prefix == b or prefix.startswith(b + "/") for b in binds):
            binds.append(prefix)
    if os.path.isfile("/etc/ld.so.cache"):
        binds.append("/etc/ld.so.cache")
    return tuple(binds), tuple(links)


def pythons() -> list[str]:
    """Interpreters to try: this one first, then system ones a program's own uid can reach without a
    minimal root (where the harness' interpreter sits in a directory only root may enter)."""
    found: list[str] = []
    for cand in (sys.executable, os.path.realpath(sys.executable), shutil.which("python3"),
                 "/usr/bin/python3", "/usr/local/bin/python3"):
        if cand and os.path.isfile(cand) and cand not in found:
            found.append(cand)
    return found


ALWAYS = ("no-new-privs", "rlimits", "timeout", "clean-env", "own-keyring")


def die_with_harness() -> tuple[str, ...]:
    """`setpriv --pdeathsig KILL`: the harness' child (`unshare`, or the interpreter) is killed when the
    harness thread that started it dies, SIGKILL included (Popen's preexec_fn is unsafe with run_many's
    threads); `unshare --kill-child` and inside.py pass it on to the program. () where setpriv lacks it."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL") if "--pdeathsig" in usage else ()


def candidates() -> list[Isolation]:
    """Every way to start a program, strongest first (each is probed before use). Within one way, this
    interpreter first, then system ones (an interpreter only decides whether the way starts at all)."""
    unshare = shutil.which("unshare")
    binds, links = system_view()
    root = os.geteuid() == 0
    cg = cgroups.available() if root else None
    cg_layers = (f"cgroup-{cg}",) if cg else ()
    ways: list[tuple] = []  # (prefix, pivot, own_uid, cgroup, layers)
    if root and unshare:
        ns = (unshare, *_NAMESPACES)
        if cg:
            ways.append((ns, True, True, cg, (*_NS_LAYERS, "own-uid", *cg_layers)))
        ways.append((ns, True, True, None, (*_NS_LAYERS, "own-uid")))
    if root:
        if cg:
            ways.append(((), False, True, cg, ("own-uid", *cg_layers)))
        ways.append(((), False, True, None, ("own-uid",)))
    elif unshare:
        ways.append(((unshare, "--user", "--map-root-user", *_NAMESPACES), True, False, None, ("userns", *_NS_LAYERS)))
    ways.append(((), False, False, None, ()))
    reaper = die_with_harness()
    dies = ("dies-with-harness",) if reaper else ()
    return [Isolation((*reaper, *prefix), python, pivot, own_uid, cg_, (*layers, *ALWAYS, *dies),
                      binds if pivot else (), links if pivot else ())
            for prefix, pivot, own_uid, cg_, layers in ways for python in pythons()]


_lock = threading.Lock()
_cache: Isolation | None = None
_mountpoint: str | None = None
PROBE_SRC = "import hashlib, json, math\nprint('ok', hashlib.md5(b'').hexdigest())\n"


def mountpoint() -> str:
    """One empty root-only directory per harness process: each program mounts its private tmpfs there,
    inside its own mount namespace, so nothing is ever written into it on the host."""
    global _mountpoint
    if _mountpoint is None or not os.path.isdir(_mountpoint):  # e.g. removed by a /tmp cleaner
        _mountpoint = tempfile.mkdtemp(prefix=f"{stale.ROOT_PREFIX}{os.getpid()}-")
        atexit.register(_remove_mountpoint, _mountpoint)
    return _mountpoint


def _remove_mountpoint(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def isolation(refresh: bool = False) -> Isolation:
    """The strongest isolation this machine supports (probed once per process, thread-safe)."""
    global _cache
    from .run import probe

    with _lock:
        if _cache is None or refresh:
            stale.reclaim()
            tried = candidates()
            _cache = next((iso for iso in tried if probe(iso)), None)
            if _cache is None:
                raise RuntimeError(f"sandbox: no Python interpreter could be started (tried {pythons()})")
        return _cache
