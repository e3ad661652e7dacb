"""Crash-safe writes: a reader (or a resumed run) sees the old file or the new one, never half of one;
the clean-up of what a killed writer left behind; and a full disk turned into one `DiskFull` error that
names the path and the space left (the temporary removed, the old file untouched)."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import DiskFull

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = tuple(os.strerror(code) for code in _NO_SPACE)   # "No space left on device", ...


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` comes from a full disk (blocks, inodes or quota): an OSError with ENOSPC/EDQUOT anywhere
    in its chain, or a library error whose message quotes it (safetensors' SafetensorError; torch.save into a
    file object raises a RuntimeError whose context is the OSError)."""
    if isinstance(exc, DiskFull):   # already said, with the path that failed
        return False
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        if any(text in str(exc) for text in _NO_SPACE_TEXT):
            return True
        exc, seen = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__), seen + 1
    return False


def free_space(path: str | os.PathLike) -> str:
    """'1.5 MiB and 12 inodes free' on the file system holding `path` (its nearest existing ancestor)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return "free space unknown"
    free = st.f_bavail * st.f_frsize
    size = next(f"{free / 2 ** (10 * k):.1f} {unit}" for k, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB"), (0, "B"))
                if free >= 2 ** (10 * k) or k == 0)
    return f"{size} and {st.f_favail} inodes free"


def disk_full(path: str | os.PathLike) -> DiskFull:
    return DiskFull(f"no space left on the disk writing {path} ({free_space(path)} there); nothing half-written "
                    f"was kept: free some space, then run the same command again (add --resume to continue a run)")


@contextmanager
def space_checked(path: str | os.PathLike) -> Iterator[None]:
    """For writes that do not go through this module (a lock file, a log): a full disk inside the block is a
    DiskFull naming `path`."""
    try:
        yield
    except Exception as exc:
        if is_no_space(exc):
            raise disk_full(path) from None
        raise


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
    with space_checked(path):
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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_no_space(exc):
            raise disk_full(path) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


@contextmanager
def directory(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary sibling directory, fsync it, then rename it into place (replacing an old one). The
    directory is created with mode 0777 less the umask, like every other folder of a run (mkdtemp's is 0700).
    A full disk while the block fills it (whichever library writes) is a DiskFull naming `path`."""
    path = Path(path)
    with space_checked(path):
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
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(exc):
            raise disk_full(path) from None
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
