"""One cgroup per program, so its memory and process-count limits hold for all its processes together.

cgroup v2 where the harness' own cgroup already delegates `memory` and `pids` to its children, else cgroup v1 (one
child in the harness' own memory and pids cgroups), else none (the caller falls back to rlimits). The
program joins its cgroup itself (sandbox/inside.py writes "0" to each `cgroup.procs`) before any program
code runs; created under the harness' own cgroup, the limits of the harness' cgroup still apply on top."""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass

ROOT = "/sys/fs/cgroup"
PREFIX = "clsl-sbx-"


def _own_paths() -> dict[str, str]:
    """controller ('' for v2) -> this process' cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _v2_base() -> str | None:
    """The harness' v2 cgroup directory if children can get memory + pids limits there, else None."""
    own = _own_paths().get("")
    if own is None:
        return None
    for mount in (ROOT, os.path.join(ROOT, "unified")):
        base = mount + own.rstrip("/")
        if os.path.isfile(os.path.join(mount, "cgroup.controllers")) and os.path.isdir(base):
            try:  # only where already delegated: the harness never re-configures its own cgroup
                enabled = _read(os.path.join(base, "cgroup.subtree_control")).split()
            except OSError:
                return None
            return base if {"memory", "pids"} <= set(enabled) else None
    return None


def _v1_bases() -> dict[str, str] | None:
    own = _own_paths()
    bases = {}
    for c in ("memory", "pids"):
        base = os.path.join(ROOT, c) + own.get(c, "/").rstrip("/")
        if c not in own or not os.path.isfile(os.path.join(base, "cgroup.procs")):
            return None
        bases[c] = base
    return bases


@dataclass
class ProgramCgroup:
    """Limits for one program. `procs`: the cgroup.procs files the program writes itself into."""

    version: str
    dirs: tuple[str, ...]
    procs: tuple[str, ...]

    @classmethod
    def create(cls, version: str, memory_bytes: int, max_processes: int) -> "ProgramCgroup":
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"  # the pid: stale.py reclaims a dead harness' cgroups
        made: list[str] = []
        try:
            if version == "v2":
                base = _v2_base()
                if base is None:
                    raise OSError("cgroup v2 memory/pids delegation is not available")
                d = os.path.join(base, name)
                os.mkdir(d, 0o755)
                made.append(d)
                _write(os.path.join(d, "memory.max"), str(memory_bytes))
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), "0")
                _write(os.path.join(d, "pids.max"), str(max_processes))
            else:
                bases = _v1_bases()
                if bases is None:
                    raise OSError("cgroup v1 memory and pids hierarchies are not available")
                for c, base in bases.items():
                    d = os.path.join(base, name)
                    os.mkdir(d, 0o755)
                    made.append(d)
                m, p = made
                _write(os.path.join(m, "memory.limit_in_bytes"), str(memory_bytes))
                if os.path.exists(os.path.join(m, "memory.memsw.limit_in_bytes")):
                    _write(os.path.join(m, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                _write(os.path.join(p, "pids.max"), str(max_processes))
        except OSError:
            cls(version, tuple(made), ()).remove()
            raise
        return cls(version, tuple(made), tuple(os.path.join(d, "cgroup.procs") for d in made))

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        path = os.path.join(self.dirs[0], "memory.events" if self.version == "v2" else "memory.oom_control")
        try:
            for line in _read(path).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def remove(self) -> None:
        """Kill whatever is left inside (normally nothing: the PID namespace died with the program) and
        remove the cgroup directories. Never raises."""
        for d in reversed(self.dirs):
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self._kill(d)
                    time.sleep(0.01)

    def _kill(self, d: str) -> None:
        try:
            if os.path.exists(os.path.join(d, "cgroup.kill")):
                _write(os.path.join(d, "cgroup.kill"), "1")
                return
            for pid in _read(os.path.join(d, "cgroup.procs")).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        except OSError:
            pass


def bases() -> list[str]:
    """The directories under which this process creates program cgroups (v2 and/or v1), where usable."""
    found = []
    try:
        v2 = _v2_base()
        if v2:
            found.append(v2)
        found += list((_v1_bases() or {}).values())
    except OSError:
        pass
    return found


def available() -> str | None:
    """'v2', 'v1' or None: which kind of per-program cgroup this process can create and remove."""
    for version in ("v2", "v1"):
        try:
            ProgramCgroup.create(version, 64 * 2**20, 8).remove()
            return version
        except OSError:
            continue
    return None
