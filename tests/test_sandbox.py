"""The sandbox scores hostile programs as failures, protects files/network/processes outside it, and keeps
going; each OS layer is also checked on its own (reliability guard off) where this machine provides it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from clsharelora.errors import ConfigError
from clsharelora.evaluation import sandbox
from clsharelora.evaluation.sandbox import layers as layers_mod
from clsharelora.evaluation.sandbox import run_many, run_program

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
    plain = [iso for iso in layers_mod.candidates() if not iso.prefix and not iso.own_uid]
    monkeypatch.setattr(layers_mod, "candidates", lambda: plain)
    try:
        iso = sandbox.isolation(refresh=True)
        assert iso.prefix == () and not iso.own_uid and "netns" not in iso.description
        assert run_program(problem("pass")).status == "passed"
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
