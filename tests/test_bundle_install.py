"""The offline bundle end to end (slow; `make test-bundle`): built here for this machine's Python (pip
downloads the wheels), installed with the network unreachable (`unshare -rn`: a user + network namespace with
no interface but loopback) into a fresh venv that sees only the node's preinstalled set (NODE_PROVIDED and
what it needs, linked from this environment), then a dry run and a tiny run from the installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from clsharelora import bundle
from clsharelora.paths import PROJECT_ROOT

from conftest import TINY_STREAM

pytestmark = pytest.mark.slow


def _node_site(dest: Path) -> Path:
    """A folder holding only the node's packages: links to their files in this environment's site-packages."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    names, _ = bundle.closure(bundle.NODE_PROVIDED, python)
    dest.mkdir()
    import importlib.metadata as md

    for name in names:
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(base / top)
    return dest


def _offline(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-rn", *cmd], capture_output=True, text=True, **kw)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) to cut the network")
def test_bundle_installs_offline_and_runs(tmp_path):
    if subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.skip("unprivileged user + network namespaces are not allowed here")
    out = tmp_path / "bundle"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    built = subprocess.run([sys.executable, "-m", "clsharelora.cli", "bundle", "--out", str(out), "--python-version",
                            python, "--chunk-mib", "20"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                           timeout=1800)
    assert built.returncode == 0, built.stderr
    assert max(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= 20 * 2 ** 20
    assert (out / "ASSEMBLE").read_text().strip(), "expected at least one split file at 20 MiB"

    env_dir = tmp_path / "node-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "node.pth").write_text(str(_node_site(tmp_path / "node-site")) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLSHARELORA_STRATEGY_PATH", "CLSHARELORA_DATA")}
    env.update(PYTHON=str(py), CLSHARELORA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    assert subprocess.run([str(py), "-c", "import datasets"], capture_output=True, env=env).returncode != 0

    installed = _offline(["bash", str(out / "install.sh")], env=env, timeout=1800)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "bundle verified" in installed.stdout and "installed." in installed.stdout
    assert "trainable parameters" in (out / "self-test.log").read_text()

    env["CLSHARELORA_DATA"] = str(out / "data")
    where = subprocess.run([str(py), "-c", "import clsharelora; print(clsharelora.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
    assert where.stdout.startswith(site), where.stdout + where.stderr
    stream = tmp_path / "tiny.yaml"
    stream.write_text(TINY_STREAM)
    cli = [str(py), "-m", "clsharelora.cli", "run", "--stream", str(stream), "--model", "tiny-llama",
           "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    dry = _offline(cli + ["--dry-run"], env=env, cwd=tmp_path, timeout=600)
    assert dry.returncode == 0 and "2 experiences" in dry.stdout, dry.stderr[-3000:]
    ran = _offline(cli, env=env, cwd=tmp_path, timeout=1800)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
