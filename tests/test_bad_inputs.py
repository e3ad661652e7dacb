"""Issue 26's hostile inputs, for every command: names that would become paths (`..`, `/`, absolute, a leading
dot), symbolic links out of --out, files that are not UTF-8, duplicate YAML keys, a plan with one bad cell,
and --out pointing at a file. Each is one `error:` line, exit 2, no traceback, and the whole scratch tree
unchanged (test_cli_errors.tree). The `run`-only classes live in tests/test_cli_errors.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY_STREAM, data_root_with_gsm8k_train
from test_cli_errors import tree

from clsharelora.cli import main
from clsharelora.paths import data_root

BASE = "model: tiny-llama\nstream: {stream}\nadapter: {{name: lora, r: 2}}\nloggers: ''\n"


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _stream(t: Path, text: str = TINY_STREAM) -> Path:
    return _write(t / "stream.yaml", text)


def _study(t: Path, body: str, name: str = "tiny") -> Path:
    base = _write(t / "base.yaml", BASE.format(stream=_stream(t)))
    return _write(t / "study.yaml", f"name: {name!r}\nbase: {base}\n{body}")


def run(t: Path, *extra: str, stream: Path | None = None) -> list[str]:
    return ["run", "--stream", str(stream or _stream(t)), "--model", "tiny-llama", "--no-progress", *extra]


def compare(t: Path, strategies: str, out: Path | None = None) -> list[str]:
    return ["compare", "--stream", str(_stream(t)), "--model", "tiny-llama", "--strategies", strategies,
            "--out", str(out or t / "out"), "--no-progress"]


def study(t: Path, body: str, name: str = "tiny", out: Path | None = None) -> list[str]:
    return ["study", "--config", str(_study(t, body, name)), "--out", str(out or t / "out"), "--no-progress"]


def _linked_out(t: Path, child: str) -> Path:
    """An --out folder whose `child` is a symbolic link to a folder outside it."""
    (t / "elsewhere").mkdir()
    (t / "out").mkdir()
    (t / "out" / child).symlink_to(t / "elsewhere")
    return t / "out"


def _latin1_data_root(t: Path) -> Path:
    """A data root like the real one whose gsm8k/train.jsonl has one Latin-1 byte on line 2."""
    lines = (data_root() / "gsm8k" / "train.jsonl").read_bytes().splitlines(keepends=True)[:4]
    lines[1] = lines[1].replace(b"a", b"\xe9", 1)
    return data_root_with_gsm8k_train(t, b"".join(lines))


LATIN1 = "model: tiny-llama\nname: caf\xe9\n".encode("latin-1")
UTF16 = "model: tiny-llama\n".encode("utf-16")

# name -> (argv built in the scratch dir, pattern the one error line must match)
CASES = {
    # --- 26.1 names are data, not paths
    "study name ..": (lambda t: study(t, "strategies: [lora]\nseeds: [0]\n", name="../../esc"),
                      r"study name '\.\./\.\./esc' \(.*study\.yaml\) cannot name a file or folder"),
    "study name absolute": (lambda t: study(t, "strategies: [lora]\nseeds: [0]\n", name="/tmp/esc"),
                            r"study name '/tmp/esc'"),
    "study label with /": (lambda t: study(t, "strategies: [{label: ../x, adapter: lora}]\nseeds: [0]\n"),
                           r"strategy label '\.\./x' \(.*strategies\[0\]\)"),
    "stream name ..": (lambda t: run(t, stream=_stream(t, TINY_STREAM.replace("name: tiny", "name: ../../e"))),
                       r"stream name '\.\./\.\./e' .*allowed are letters, digits"),
    "experience name with /": (lambda t: run(t, stream=_stream(t, TINY_STREAM.replace("name: mmlu", "name: ../../x/y"))),
                               r"experience name '\.\./\.\./x/y' \(.*experience 2\)"),
    "run name leading dot": (lambda t: run(t, "--name", ".hidden", "--out", str(t / "out")), r"run name '\.hidden'"),
    "run name absolute": (lambda t: run(t, "--name", "/tmp/x"), r"run name '/tmp/x' \(from --name\)"),
    "compare label with ..": (lambda t: compare(t, "lora,lora:../../x"),
                              r"strategy 'lora:\.\./\.\./x' is not a strategy spec"),
    "compare same run twice": (lambda t: compare(t, "lora,sharelora,lora"),
                               r"strategies 'lora' and 'lora' resolve to the same run"),
    "compare run folder a link out": (lambda t: compare(t, "lora", _linked_out(t, "lora")),
                                      r"run folder of 'lora': .*resolves to .*elsewhere, outside --out"),
    "study runs folder a link out": (lambda t: study(t, "strategies: [lora]\nseeds: [0]\n", out=_linked_out(t, "runs")),
                                     r"cell lora/seed0-order0: run path .*resolves to .*elsewhere/lora/seed0-order0, outside --out"),
    # --- 26.3 encodings and duplicate keys
    "config latin-1": (lambda t: run(t, "--config", str(_write(t / "c.yaml", LATIN1))),
                       r"c\.yaml:2: byte 27: not UTF-8 .*expected a UTF-8 text file"),
    "config utf-16": (lambda t: run(t, "--config", str(_write(t / "c.yaml", UTF16))), r"c\.yaml:1: byte 0: not UTF-8"),
    "stream latin-1": (lambda t: run(t, stream=_write(t / "s.yaml", TINY_STREAM.replace("tiny", "t\xe9").encode("latin-1"))), r"s\.yaml:1: byte 7: not UTF-8"),
    "study latin-1": (lambda t: ["study", "--config", str(_write(t / "st.yaml", b"name: caf\xe9\n")), "--out",
                                 str(t / "out")], r"st\.yaml:1: byte 9: not UTF-8"),
    "data jsonl latin-1": (lambda t: run(t, "--data-root", str(_latin1_data_root(t)), "--out", str(t / "out")),
                           r"gsm8k/train\.jsonl:2: byte \d+: not UTF-8"),
    "config duplicate key": (lambda t: run(t, "--config", str(_write(t / "c.yaml", "train:\n  lr: 1.0e-3\n  epochs: 1\n"
                                                                                      "  lr: 2.0e-3\n"))),
                             r"c\.yaml:4:3: .*key 'lr' is given twice, on lines 2 and 4"),
    "stream duplicate key": (lambda t: run(t, stream=_stream(t, TINY_STREAM + "name: other\n")),
                             r"stream\.yaml:\d+:\d+: .*key 'name' is given twice, on lines 1 and 9"),
    "study duplicate key": (lambda t: study(t, "strategies: [lora]\nseeds: [0]\nseeds: [1]\n"),
                            r"study\.yaml:5:1: .*key 'seeds' is given twice, on lines 4 and 5"),
    # --- 26.4 the whole plan before the first write
    "study seed 2**32 in a later cell": (lambda t: study(t, f"strategies: [lora]\nseeds: [0, {2 ** 32}]\n"),
                                         r"seed 4294967296 is out of range"),
    "study bad option value": (lambda t: study(t, "strategies: [lora, {label: bad, adapter: {name: lora, r: 0}}]\n"
                                                  "seeds: [0]\n"), r"'r' must be a positive integer"),
    "study rank above a layer": (lambda t: study(t, "strategies: [lora, {label: big, adapter: {name: lora, r: 33}}]\n"
                                                    "seeds: [0]\n"), r"k_proj maps 64 -> 32, so r must be <= 32"),
    # --- small: --out at a file
    "study out a file": (lambda t: study(t, "strategies: [lora]\nseeds: [0]\n", out=_write(t / "a-file", "x")),
                         r"--out .*a-file is a file"),
    "report out a file": (lambda t: ["report", str(t), "--out", str(_write(t / "a-file", "x"))],
                          r"--out .*a-file is a file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, capsys, monkeypatch):
    make_args, pattern = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)   # default output folders (runs/...) land here, inside the snapshot
    args = make_args(work)
    before = tree(tmp_path)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert tree(tmp_path) == before, "nothing may be written, changed or removed for bad input"
    assert not (tmp_path.parent / "esc").exists() and not Path("/tmp/esc").exists()


def test_the_name_rule_allows_what_default_names_use():
    from clsharelora.pathsafe import check_name

    for name in ("demo-sharelora-share_b", "lora+replay", "seed0-order1", "v1.2", "_x", "Llama-2-7b"):
        assert check_name(name, "name") == name
    for name in ("", ".", "..", ".x", "a/b", "a\\b", "a b", "/abs", "é"):
        with pytest.raises(Exception, match="cannot name a file or folder"):
            check_name(name, "name")
