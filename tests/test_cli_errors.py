"""Bad input: one clear `error:` line naming the problem, exit code 2, no traceback, nothing written.

Every case runs the CLI in-process from a scratch working directory and compares a snapshot of that whole
tree (names, modes, contents, links) before and after: a bad input may not create, change or remove anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import data_root_with_gsm8k_train

from clsharelora.cli import main
from clsharelora.paths import data_root
from clsharelora.training.rundir import RunLock


def _stream(tmp_path: Path, experiences) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "experiences": experiences}))
    return path


def _corrupt_data_root(tmp_path: Path) -> Path:
    lines = (data_root() / "gsm8k" / "train.jsonl").read_text().splitlines()[:5]
    lines[3] = lines[3][:40]  # a truncated JSON line
    return data_root_with_gsm8k_train(tmp_path, "\n".join(lines) + "\n")


def _named_stream(tmp_path: Path, name: str) -> Path:
    from conftest import TINY_STREAM

    return _write(tmp_path / "named.yaml", TINY_STREAM.replace("name: tiny", f"name: {name!r}"))


def _model_dir(tmp_path: Path, files: dict[str, str]) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return str(folder)


def _file(tmp_path: Path) -> Path:
    return _write(tmp_path / "a-file", "not a directory\n")


def _locked(tmp_path: Path) -> list[str]:
    """--out a directory whose lock another holder (this test process, through its own descriptor) has."""
    out = tmp_path / "out"
    out.mkdir()
    HELD.append(RunLock(out).acquire())
    return []


def _holding_run(tmp_path: Path, resume: bool) -> list[str]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "identity.json").write_text(json.dumps({"config": {"model": "smollm2-135m", "seed": 5},
                                                   "stream": {"content": {}}, "data": {"sha256": {}}}))
    return ["--resume"] if resume else []


HELD: list[RunLock] = []

# name -> (extra CLI args built in the scratch dir, pattern the one error line must match)
CASES = {
    # --- the 13 classes this file always had
    "yaml syntax": (lambda t: ["--config", str(_write(t / "c.yaml", "train:\n  lr: [1\n"))], r"c\.yaml:\d+:\d+: invalid YAML"),
    "unknown key": (lambda t: ["--config", str(_write(t / "c.yaml", "trian: {}\n"))], "did you mean 'train'"),
    "unknown --set key": (lambda t: ["--set", "train.lrr=1"], "did you mean 'lr'"),
    "unknown strategy": (lambda t: ["--strategy", "sharelor"], "did you mean 'sharelora'.*known: lora, sharelora, vera"),
    "unknown cl": (lambda t: ["--cl", "replya"], "did you mean 'replay'"),
    "olora on vera": (lambda t: ["--strategy", "vera", "--cl", "olora"], "olora works on peft LoRA adapters"),
    "lwf on vera": (lambda t: ["--strategy", "vera", "--cl", "lwf"], "lwf works on peft LoRA adapters"),
    "unknown stream": (lambda t: ["--stream", "nope"], "stream 'nope' not found.*demo"),
    "unknown model": (lambda t: ["--model", "llama9"], "unknown model 'llama9'.*smollm2-135m"),
    "missing data root": (lambda t: ["--data-root", str(t / "none")], "is not a directory"),
    "corrupt data": (lambda t: ["--data-root", str(_corrupt_data_root(t))], r"train\.jsonl.*4"),
    "r <= 0": (lambda t: ["--set", "adapter.r=0"], "'r' must be a positive integer"),
    "bad variant": (lambda t: ["--variant", "share_c"], "share_a, share_b, share_ab"),
    "empty stream": (lambda t: ["--stream", str(_stream(t, []))], "non-empty list"),
    "task without evaluator": (lambda t: ["--stream", str(_stream(t, [{"train": {"benchmark": "gsm8k"}}]))],
                               "without an evaluator"),
    # --- output locations
    "out is a file": (lambda t: ["--out", str(_file(t))], r"--out .*a-file is a file"),
    "out under a file": (lambda t: ["--out", str(_file(t) / "sub" / "run")], r"lies under .*a-file, which is a file"),
    "out not writable": (lambda t: ["--out", "/proc/clsharelora-nowhere/run"], "not writable"),
    "out a dangling link": (lambda t: (os.symlink(t / "gone", t / "link"), ["--out", str(t / "link" / "run")])[1],
                            "dangling symbolic link"),
    "out holds another run": (lambda t: _holding_run(t, False), "already holds a run: add --resume"),
    "out holds a different run": (lambda t: _holding_run(t, True), r'holds a different run \(config differs: .*model: "smollm2-135m" -> "tiny-llama"'),
    "out holds something else": (lambda t: (_write((t / "out").mkdir() or t / "out" / "notes.txt", "x"), [])[1],
                                 "holds no clsharelora run"),
    "resume of nothing": (lambda t: ["--resume"], "holds no run to resume"),
    "out locked": (lambda t: _locked(t), rf"in use by pid {os.getpid()} on host .* \(started .*\)"),
    # --- models
    "model path missing": (lambda t: ["--model", str(t / "no-model")], "model path .*no-model.* does not exist"),
    "model path relative missing": (lambda t: ["--model", "./no/such/model"], "does not exist"),
    "model path is a file": (lambda t: ["--model", str(_file(t))], "model path .* is a file"),
    "model path empty": (lambda t: ["--model", _model_dir(t, {})], "is an empty directory"),
    "model path without config": (lambda t: ["--model", _model_dir(t, {"README": "x"})], r"holds no model \(no config\.json"),
    "model path without weights": (lambda t: ["--model", _model_dir(t, {"config.json": "{}"})], "holds no weights"),
    # --- seeds and devices
    "seed negative": (lambda t: ["--seed", "-1"], r"seed -1 is out of range: allowed are integers 0 \.\. 4294967295"),
    "seed too large": (lambda t: ["--seed", str(2 ** 32)], "seed 4294967296 is out of range"),
    "seed not an integer": (lambda t: ["--set", "seed=1.5"], "seed must be int"),
    "device absent gpu": (lambda t: ["--device", "cuda:99"], "device 'cuda:99' is not available here"),
    "device unknown": (lambda t: ["--device", "tpu:3"], "device 'tpu:3' is not a device name; allowed: auto, cpu, cuda"),
    "device unsupported": (lambda t: ["--device", "meta"], "device 'meta' is not supported"),
    # --- data
    "empty data file": (lambda t: ["--data-root", str(data_root_with_gsm8k_train(t, ""))], r"train\.jsonl: holds no gsm8k/train items"),
    "data root is a file": (lambda t: ["--data-root", str(_file(t))], "a-file .*is not a directory"),
    "train n zero": (lambda t: ["--stream", str(_stream(t, [{"train": {"benchmark": "gsm8k", "n": 0},
                                                             "eval": {"task": "gsm8k"}}]))], "train.n must be a positive"),
    "unknown benchmark": (lambda t: ["--stream", str(_stream(t, [{"train": {"benchmark": "gsm9k"},
                                                                  "eval": {"task": "gsm8k"}}]))], "gsm9k' is unknown"),
    # --- adapters
    "rank above every layer": (lambda t: ["--set", "adapter.r=100000"], r"adapter\.r=100000 is larger than the layer"),
    "rank above the smallest layer": (lambda t: ["--set", "adapter.r=33"], r"k_proj maps 64 -> 32, so r must be <= 32"),
    "lora rank above layer": (lambda t: ["--strategy", "lora", "--set", "adapter.r=65"], "must be <= 32"),
    "dropout out of range": (lambda t: ["--set", "adapter.dropout=1.5"], r"'dropout' must be in \[0, 1\)"),
    "variant on lora": (lambda t: ["--strategy", "lora", "--variant", "share_a"], "unknown option 'variant'"),
    # --- names that would become paths
    "stream name with ..": (lambda t: ["--stream", str(_named_stream(t, "../../escape")), "--out", None],
                            r"stream name '\.\./\.\./escape' .*cannot name a file or folder"),
    "stream name with /": (lambda t: ["--stream", str(_named_stream(t, "a/b")), "--out", None], "stream name 'a/b'"),
    "--name with /": (lambda t: ["--name", "x/y", "--out", None], r"run name 'x/y' \(from --name\)"),
    "--name ..": (lambda t: ["--name", "..", "--out", None], "run name '..'"),
    # --- directories where files are expected
    "stream is a directory": (lambda t: ["--stream", str(t)], "is a directory; expected a YAML file"),
    "config is a directory": (lambda t: ["--config", str(t)], "is a directory; expected a YAML file"),
    # --- other impossible values
    "negative lr": (lambda t: ["--set", "train.lr=-1"], "train.lr must be > 0"),
    "eval n zero": (lambda t: ["--set", "eval.n=0"], "eval.n must be >= 1"),
    "unknown schedule": (lambda t: ["--set", "train.schedule=cosin"], "did you mean 'cosine'"),
    "unknown logger": (lambda t: ["--set", "loggers=text,tensorbord"], "unknown .*tensorbord"),
    "unknown dtype": (lambda t: ["--set", "dtype=int8"], "dtype must be float32, bfloat16 or float16"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tree(root: Path) -> dict:
    """Every entry under root: kind, mode and content hash (files) or target (links); links are not followed."""
    out = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def test_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, capsys, monkeypatch, tiny_stream_file):
    make_args, pattern = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)   # default run directories (runs/...) land here, inside the snapshot
    args = ["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--out", str(work / "out"),
            "--no-progress"]
    extra = make_args(work)
    if None in extra:  # the case wants the default --out
        extra = [a for a in extra if a is not None and a != "--out"]
        args = args[:-3] + args[-1:]
    before = tree(tmp_path)
    try:
        code = main(args + extra)
    finally:
        while HELD:
            HELD.pop().release()
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert tree(tmp_path) == before, "nothing may be written, changed or removed for bad input"


def test_real_process_exit_code_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "clsharelora.cli", "run", "--model", "nope-model",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown model 'nope-model'")
    assert "Traceback" not in done.stderr


def test_help_everywhere():
    for args in (["--help"], ["run", "--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 0


def test_weights_and_adapter_are_checked_before_the_run_directory_exists(tmp_path, capsys, monkeypatch,
                                                                          tiny_stream_file):
    """A failure while loading weights or applying the adapter to them (hub models, whose architecture
    `prepare` cannot see) leaves nothing: the run directory is created after the model is ready."""
    from clsharelora.errors import ConfigError
    from clsharelora.training import runner

    def fails(prep, device):
        raise ConfigError("adapter.r=9999 is larger than the layer it adapts (stand-in for a hub model)")

    monkeypatch.setattr(runner, "_load_model", fails)
    before = tree(tmp_path)
    code = main(["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: adapter.r=9999 is larger than the layer it adapts " \
                                              "(stand-in for a hub model)"
    assert tree(tmp_path) == before


def test_an_error_while_tokenising_writes_nothing(tmp_path, capsys, monkeypatch, tiny_stream_file):
    """Tokenisation refuses settings that leave no target token (a ConfigError); whatever it raises comes
    before the run directory exists."""
    from clsharelora.errors import ConfigError
    from clsharelora.training import runner

    def fails(*args, **kwargs):
        raise ConfigError("experience 'gsm8k': max_length=8 leaves no target token")

    monkeypatch.setattr(runner, "make_benchmark", fails)
    before = tree(tmp_path)
    code = main(["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: experience 'gsm8k': max_length=8 leaves no target token"
    assert tree(tmp_path) == before


def test_dry_run_creates_no_real_tensor_for_the_adapter(tiny_stream_file):
    """Every weight the dry run creates (base model and adapter, any rank) lives on the meta device: the
    dispatcher sees each tensor an operation returns, so a CPU allocation cannot hide. Integer tensors are
    the run's own data checks (the seeded subset draw, `load_inputs`), not weights."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from clsharelora import config as cfgmod
    from clsharelora.dry_run import dry_run

    class RealTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.is_floating_point():
                    self.largest = max(self.largest, t.numel())
            return out

    for strategy, r in (("sharelora", 32), ("lora", 32), ("lora", 1)):
        config = cfgmod.from_dict({"model": "tiny-llama", "stream": str(tiny_stream_file),
                                   "adapter": {"name": strategy, "r": r}})
        with RealTensors() as seen:
            text = dry_run(config)
        assert "OK" in text
        assert seen.largest < 64, f"{strategy} r={r}: a real tensor of {seen.largest} elements"


def test_default_run_names_keep_variant_and_cl_apart(tiny_stream_file, tmp_path, monkeypatch):
    from clsharelora import config as cfgmod
    from clsharelora.training.runner import prepare

    monkeypatch.chdir(tmp_path)
    names = {}
    for adapter, cl in (({"name": "sharelora"}, "naive"), ({"name": "sharelora", "variant": "share_b"}, "naive"),
                        ({"name": "sharelora"}, "replay"), ({"name": "lora"}, "ewc")):
        prep = prepare(cfgmod.from_dict({"model": "tiny-llama", "stream": str(tiny_stream_file), "adapter": adapter,
                                         "cl": cl}))
        names[(adapter.get("variant"), adapter["name"], cl)] = str(prep.run_dir)
    assert names == {(None, "sharelora", "naive"): "runs/tiny-sharelora",
                     ("share_b", "sharelora", "naive"): "runs/tiny-sharelora-share_b",
                     (None, "sharelora", "replay"): "runs/tiny-sharelora-replay",
                     (None, "lora", "ewc"): "runs/tiny-lora-ewc"}
    assert not (tmp_path / "runs").exists()
