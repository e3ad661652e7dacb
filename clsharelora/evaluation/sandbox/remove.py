"""Delete a program's host working directory (only used where no private tmpfs is available) without ever
following a link: every directory is opened with O_NOFOLLOW relative to its parent's descriptor, only those
are chmod-ed (through the descriptor), links and hard links are unlinked, never their targets. Iterative,
so a deep tree cannot overflow the harness' stack; what cannot be removed is left, it never raises."""

from __future__ import annotations

import os

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def remove_tree(path: str) -> None:
    try:
        top = os.open(path, _DIR)
    except OSError:
        return
    stuck: set[tuple[int, int]] = set()
    stack = [(top, "")]  # (directory fd, its name in the parent)
    try:
        while stack:
            d, name = stack[-1]
            try:
                os.fchmod(d, 0o700)  # this very directory (a program may have made it read-only)
            except OSError:
                pass
            child = None
            try:
                entries = list(os.scandir(d))
            except OSError:
                entries = []
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        os.unlink(entry.name, dir_fd=d)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) in stuck:
                        continue
                    try:
                        os.rmdir(entry.name, dir_fd=d)
                        continue
                    except OSError:
                        pass
                    fd = os.open(entry.name, _DIR, dir_fd=d)
                    if os.fstat(fd).st_ino != st.st_ino:  # swapped under us: leave it
                        os.close(fd)
                        stuck.add((st.st_dev, st.st_ino))
                        continue
                    child = (fd, entry.name)
                    break
                except OSError:
                    continue
            if child is not None:
                stack.append(child)
                continue
            st = os.fstat(d)
            stack.pop()
            os.close(d)
            if stack:
                try:
                    os.rmdir(name, dir_fd=stack[-1][0])
                except OSError:
                    stuck.add((st.st_dev, st.st_ino))  # not emptied: never descend into it again
    finally:
        for fd, _ in stack:
            os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass
