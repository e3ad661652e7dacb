"""The sandbox's first code in the new process (run as `python -I -S -c <this text>`, never imported): as root
of fresh namespaces it joins the program's cgroups, pivots into a minimal root, drops to the program's own
uid with no capabilities, its own session keyring and no_new_privs, sets rlimits, then runs the program
text it read from stdin.

stdin (a private memfd, replaced by /dev/null before the program runs): 8-byte big-endian length, a header
of `key<TAB>value` lines (lists joined by \x1e, pairs by \x1f; written by run.py's `_header`; no json:
importing it costs more than the rest of the set-up), then the 32-byte token, then the UTF-8 program. Result fd: b"S" once the set-up is
done, then the token once the program text ran to its end (both written by this code, never by the harness
reading the program's streams)."""

import os
import sys


def _read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError("sandbox: short header on stdin")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _join_cgroups(paths):
    for path in paths:  # "0" = the writing process; every process it starts later is inside too
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203, "s390x": 217}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2


def _minimal_root(cfg, uid, gid):
    """A fresh tmpfs as `/`: read-only, nosuid binds of the system and Python directories, /dev with five
    character devices, a new /proc for this PID namespace, /tmp and the program's own /sandbox. Nothing
    else of the host (its /tmp, /run, /dev/shm, home and work directories, their sockets) is reachable."""
    ctypes, libc = _libc()
    libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)

    def mount(src, dst, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        _check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {dst}")

    root = cfg["mountpoint"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_bytes']},mode=755")
    for name, target in cfg["links"]:
        os.symlink(target, root + "/" + name)
    for path in cfg["binds"]:
        dst = root + path
        if os.path.isdir(path):
            os.makedirs(dst, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
            open(dst, "w").close()
        mount(path, dst, None, MS_BIND | MS_REC)
        flags = os.statvfs(path).f_flag  # ST_* bits; flags locked by a user namespace must be kept
        keep = (flags & (MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)) | (MS_RELATIME if flags & 4096 else 0)
        mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)
    os.mkdir(root + "/dev", 0o755)
    for dev in ("null", "zero", "full", "random", "urandom"):
        with open(root + "/dev/" + dev, "w"):
            pass
        mount("/dev/" + dev, root + "/dev/" + dev, None, MS_BIND)
    os.mkdir(root + "/proc", 0o555)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp", exist_ok=True)  # may exist already as the parent of a bind
    os.chmod(root + "/tmp", 0o1777)
    os.mkdir(root + "/sandbox", 0o700)
    if uid is not None:
        os.chown(root + "/sandbox", uid, gid)
    os.mkdir(root + "/.old", 0o700)
    nr = _PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(f"sandbox: pivot_root syscall number unknown on {os.uname().machine}")
    _check(libc.syscall(nr, root.encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    os.chdir("/sandbox")


def _empty_bounding_set(ctypes, libc):
    for cap in range(64):  # nothing exec-ed later can regain a capability
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # PR_CAPBSET_DROP; EINVAL: no such cap
            break


def _drop_privileges(uid, gid):
    ctypes, libc = _libc()
    _empty_bounding_set(ctypes, libc)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to non-root: permitted and effective capabilities are cleared


def _drop_capabilities():
    """Where the program keeps its uid (root of its own user namespace, or a plain process): no capabilities
    at all, so it cannot undo the minimal root (umount, mount) or use root's privileges."""
    ctypes, libc = _libc()
    _empty_bounding_set(ctypes, libc)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, this process, all zero
    _check(libc.capset(ctypes.byref(header), data), "capset")


def _no_new_privs():
    ctypes, libc = _libc()
    _check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")  # setuid/file caps no longer elevate


_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "ppc64": 271, "s390x": 280}
KEYCTL_JOIN_SESSION_KEYRING, ENOSYS, EPERM = 1, 38, 1


def _own_session_keyring():
    """A new, empty, anonymous session keyring: the kernel keyring is not namespaced, so without this the
    program would search, read and add keys in the harness' session keyring (and meet other programs there).
    It goes when the program's last process does. Where keyctl is unavailable (ENOSYS, or EPERM from a
    seccomp filter) the program cannot reach any keyring either."""
    ctypes, libc = _libc()
    nr = _KEYCTL.get(os.uname().machine)
    if nr is None:
        raise OSError(f"sandbox: keyctl syscall number unknown on {os.uname().machine}")
    if libc.syscall(nr, KEYCTL_JOIN_SESSION_KEYRING, None) < 0 and ctypes.get_errno() not in (ENOSYS, EPERM):
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl(KEYCTL_JOIN_SESSION_KEYRING): {os.strerror(err)}")


def _die_with_parent(parent):
    """SIGKILL when the process that started this one dies (the harness, or `unshare` whose own parent-death
    signal is the harness'): set again here because a change of uid clears it (prctl(2)); if the parent
    died before that, exit now."""
    ctypes, libc = _libc()
    _check(libc.prctl(1, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(137)


def _limits(cfg):
    import resource
    def limit(what, value):
        soft, hard = resource.getrlimit(what)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(what, (value, value))
    limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    limit(resource.RLIMIT_DATA, cfg["memory_bytes"])
    limit(resource.RLIMIT_CPU, cfg["cpu_s"])
    limit(resource.RLIMIT_NPROC, cfg["nproc"])
    limit(resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
    limit(resource.RLIMIT_NOFILE, cfg["nofile"])
    limit(resource.RLIMIT_CORE, 0)


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


def _parse(text):
    raw = dict(line.split("\t", 1) for line in text.split("\n"))
    cfg = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in raw.items()}
    for key in ("cgroup_procs", "binds", "links"):
        cfg[key] = [item for item in raw[key].split("\x1e") if item]
    cfg["links"] = [item.split("\x1f") for item in cfg["links"]]
    for key in ("uid", "gid"):
        cfg[key] = None if raw[key] == "" else int(raw[key])
    cfg["guard"] = raw["guard"] == "1"
    return cfg


def _bootstrap():
    cfg = _parse(_read_exact(0, int.from_bytes(_read_exact(0, 8), "big")).decode("utf-8"))
    token = _read_exact(0, 32)
    code = _read_exact(0, cfg["source_bytes"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    fd, uid, gid, parent = cfg["result_fd"], cfg["uid"], cfg["gid"], os.getppid()
    _join_cgroups(cfg["cgroup_procs"])
    if cfg["mountpoint"]:
        _minimal_root(cfg, uid, gid)
    if uid is not None:
        _drop_privileges(uid, gid)
    else:
        _drop_capabilities()
    _die_with_parent(parent)
    _own_session_keyring()
    _no_new_privs()
    _limits(cfg)
    os.write(fd, b"S")
    compiled, guard = compile(code.decode("utf-8"), "program.py", "exec"), cfg["guard"]
    del code, cfg
    if guard:
        _reliability_guard()
    write = os.write
    exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
    write(fd, token)


_bootstrap()
