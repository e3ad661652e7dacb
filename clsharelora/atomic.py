"""Crash-safe writes: a reader (or a resumed run) sees the old file or the new one, never half of one;
and the clean-up of what a killed writer left behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_name(path: Path) -> Path:
    """A fresh `.NAME.<random>.tmp` sibling of `path` (the pattern `recover` cleans up)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def umask() -> int:
    """The process umask, read from /proc without changing it (else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(folder: str | os.PathLike) -> None:
    """Give `folder` and everything under it the modes a plain write would have had under the umask (0755
    folders, 0644 files, executables 0755 under umask 022): libraries that write through their own temporary
    files (safetensors, tempfile.mkdtemp) leave 0600 / 0700, which collaborators cannot read."""
    mask = umask()
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        full = 0o777 if path.is_dir() or path.stat().st_mode & 0o111 else 0o666
        os.chmod(path, full & ~mask)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary sibling, fsync it and rename it over `path`. The temporary is created with
    mode 0666 so the kernel applies the umask (a file a collaborator can read under umask 022), unlike
    mkstemp's fixed 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


@contextmanager
def directory(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary sibling directory, fsync it, then rename it into place (replacing an old one). The
    directory is created with mode 0777 less the umask, like every other folder of a run (mkdtemp's is 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        follow_umask(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recover(folder: str | os.PathLike) -> list[str]:
    """Undo what a kill during `write_bytes` / `directory` left in `folder`: temporaries (`.NAME.*.tmp`) are
    removed; a renamed-away old directory (`.NAME.old`) is moved back when NAME is missing (killed between
    the two renames), else removed. Only safe while no other process writes into `folder` (hold the run lock).
    Returns the names it removed or restored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if not name.startswith("."):
            continue
        if name.endswith(".tmp"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            done.append(name)
        elif name.endswith(".old") and entry.is_dir() and not entry.is_symlink():
            original = folder / name[1:-len(".old")]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                os.replace(entry, original)
            done.append(name)
    return done
