"""Reclaim what a harness killed mid-batch (SIGKILL, OOM) left behind: its programs' cgroups (and any process
still in them), its root mount folder and its programs' host working directories. Each carries the pid of
the harness that made it; whatever belongs to a pid that no longer runs is removed when the next harness
probes its isolation. Never raises: what cannot be removed stays."""

from __future__ import annotations

import os
import re
import tempfile

from . import cgroups
from .remove import remove_tree

ROOT_PREFIX = "clsl-sbx-root-"
WORKDIR_PREFIX = "clsl-sbx-"
_OWNED = re.compile(r"clsl-sbx-(?:root-)?(\d+)-[^/]+$")


def _dead(name: str) -> bool:
    """True if `name` was made by a harness process that no longer exists (a live pid is never touched)."""
    m = _OWNED.match(name)
    if m is None or int(m.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def reclaim() -> None:
    for base in cgroups.bases():
        try:
            names = [e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False) and _dead(e.name)]
        except OSError:
            continue
        for name in names:
            cgroups.ProgramCgroup("", (os.path.join(base, name),), ()).remove()
    tmp = tempfile.gettempdir()
    try:
        entries = [e for e in os.scandir(tmp) if e.is_dir(follow_symlinks=False) and _dead(e.name)]
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(ROOT_PREFIX):
            try:
                os.rmdir(entry.path)  # a mount point only: always empty on the host
            except OSError:
                pass
        else:
            _kill_owner(entry.path)
            remove_tree(entry.path)


def _kill_owner(path: str) -> None:
    """A working directory (fallback without a private root) belongs to its program's own uid where it has
    one: kill what that uid still runs, e.g. a daemon that outlived a killed harness without a PID namespace
    or cgroup to collect it."""
    from .run import UID_BASE, _kill_uid

    try:
        uid = os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        return
    if uid >= UID_BASE:
        _kill_uid(uid)
