"""Resumable runs: atomic checkpoints of everything a bit-identical continuation needs.

A checkpoint directory holds
  adapter.safetensors   trainable tensors by name (each shared tensor once)
  optimizer.pt          optimizer + LR-scheduler state (torch.save of plain state dicts)
  plugins.pt            state of stateful CL plugins (EWC importances, ...)
  rng.pt                torch CPU/CUDA generator states
  state.json            position in the stream, python/numpy RNG, results so far, cost counters
  checksums.json        size and SHA-256 of each file above, written last
and `checkpoints/LATEST` names the newest complete one; it is replaced atomically after the directory is
renamed into place, so a kill at any moment leaves the previous checkpoint intact. On resume the newest
checkpoint whose files match their checksums is used; a corrupt one is reported and skipped. Avalanche's own
`save_checkpoint` pickles the whole strategy with dill, which fails on torch optimizers here.

Names: `step-<global optimizer step, 8 digits>-done-<experiences completed>`. Runs written before this
scheme named them `step-<step>-exp-<n>`, where n had the same meaning (state.json's position.exp_index,
the index of the experience to continue = the experiences completed); both are read.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from safetensors.torch import load_file, save_file

from .. import atomic
from ..errors import UserError
from . import engine
from .results import ResultsStore

LATEST = "LATEST"
CHECKSUMS = "checksums.json"
FILES = ("adapter.safetensors", "optimizer.pt", "plugins.pt", "rng.pt", "state.json")
_NAME = re.compile(r"step-(\d+)-(?:done|exp)-(\d+)$")


def checkpoint_name(global_step: int, done: int) -> str:
    return f"step-{global_step:08d}-done-{done}"


def _order(path: Path) -> tuple[int, int]:
    """(global step, experiences done) of a checkpoint directory name; newest sorts last."""
    match = _NAME.match(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def write_checksums(folder: Path) -> None:
    sums = {f.name: {"size": f.stat().st_size, "sha256": atomic.sha256_file(f)}
            for f in sorted(folder.iterdir()) if f.is_file() and f.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps({"algorithm": "sha256", "files": sums}, indent=1))


def verify(folder: Path) -> str | None:
    """None when every file of the checkpoint matches its stored size and checksum, else why not.
    Checkpoints of older versions carry no checksums: they pass when all their files are present."""
    manifest = folder / CHECKSUMS
    if not manifest.is_file():
        missing = [name for name in FILES if not (folder / name).is_file()]
        return f"missing {', '.join(missing)}" if missing else None
    try:
        sums = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{CHECKSUMS} unreadable ({type(exc).__name__})"
    for name in FILES:
        entry = sums.get(name) if isinstance(sums, dict) else None
        path = folder / name
        if not isinstance(entry, dict):
            return f"{name} not listed in {CHECKSUMS}"
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != entry.get("size"):
            return f"{name} has {path.stat().st_size} bytes, {entry.get('size')} expected (truncated?)"
        if atomic.sha256_file(path) != entry.get("sha256"):
            return f"{name} checksum mismatch"
    return None


def _torch_save(obj, path: Path) -> None:
    """torch.save through a Python file object: a full disk then surfaces as the OSError (ENOSPC) that
    atomic.directory reports, where torch.save to a path says only 'unexpected pos 704 vs 598'."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    np_state = np.random.get_state()
    plain = {"python": _listify(random.getstate()),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, plain


def set_rng_state(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _listify(obj):
    return [_listify(x) for x in obj] if isinstance(obj, (list, tuple)) else obj


class Checkpointer:
    """Writes and reads checkpoints of one run directory (rank 0 writes; everybody can read)."""

    def __init__(self, run_dir: str | Path, keep: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, strategy, *, store, position: dict, plugins=(), gathered: dict | None = None) -> Path:
        """`gathered`: for a sharded model, {"adapter": .., "optimizer": ..} gathered whole on every rank
        (CheckpointPlugin.save); the optimizer state is then keyed by parameter name, not index."""
        tag = checkpoint_name(strategy.global_step, position["exp_index"])
        target = self.root / tag
        with atomic.directory(target) as tmp:
            save_file(gathered["adapter"] if gathered else trainable_state(strategy.model),
                      str(tmp / "adapter.safetensors"))
            _torch_save({"optimizer": gathered["optimizer"] if gathered else strategy.optimizer.state_dict(),
                         "scheduler": strategy.scheduler.state_dict() if strategy.scheduler else None},
                        tmp / "optimizer.pt")
            _torch_save({type(p).__name__: p.state_dict() for p in plugins if hasattr(p, "state_dict")},
                        tmp / "plugins.pt")
            tensors, plain = rng_state()
            _torch_save(tensors, tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps({
                "position": position, "global_step": strategy.global_step, "rng": plain,
                "results": store.to_json(),
            }))
            write_checksums(tmp)
        atomic.write_text(self.root / LATEST, tag + "\n")
        self._prune(keep_tag=tag)
        return target

    def all(self) -> list[Path]:
        """Checkpoint directories, oldest first (by global step, then experiences done)."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name)), key=_order)

    def _prune(self, keep_tag: str) -> None:
        for old in self.all()[:-self.keep]:
            if old.name != keep_tag:
                shutil.rmtree(old, ignore_errors=True)

    def latest(self, *, remove_corrupt: bool = False) -> Path | None:
        """The newest checkpoint that passes `verify`. Corrupt newer ones are reported on stderr (and
        removed with remove_corrupt, so later pruning keeps valid ones); None when there is none at all.
        A UserError when checkpoints exist but none is valid: a fresh start would redo finished work."""
        found = self.all()
        rejected = []
        for path in reversed(found):
            why = verify(path)
            if why is None:
                for bad, reason in rejected:
                    print(f"warning: checkpoint {bad} is corrupt ({reason}); resuming from {path.name}"
                          + (" and removing it" if remove_corrupt else ""), file=sys.stderr, flush=True)
                    if remove_corrupt:
                        shutil.rmtree(bad, ignore_errors=True)
                if remove_corrupt and rejected:
                    atomic.write_text(self.root / LATEST, path.name + "\n")
                return path
            rejected.append((path, why))
        if rejected:
            reasons = "; ".join(f"{p.name}: {why}" for p, why in rejected)
            raise UserError(f"{self.root} holds no valid checkpoint ({reasons}); move it away to start the run "
                            f"over, or choose another --out")
        return None

    @staticmethod
    def read_state(path: Path) -> dict:
        """state.json, checked to hold what `save` writes: a checksum only says its bytes are the ones written,
        and a resume must never stop on a KeyError in the middle of restoring. Anything else is a UserError."""
        file = path / "state.json"
        try:
            state = json.loads(file.read_text())
            why = _state_problem(state)
        except (OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if why:
            raise UserError(f"checkpoint {path}: state.json is not a checkpoint state ({why}); move the checkpoint "
                            f"away to resume from an older one, or choose another --out")
        return state

    @staticmethod
    def read(path: Path) -> dict:
        """Everything `save` wrote; a file that cannot be parsed is a UserError naming it (never a traceback)."""
        def load(name, reader):
            try:
                return reader(path / name)
            except Exception as exc:  # noqa: BLE001  (safetensors, torch and json raise many kinds)
                raise UserError(f"checkpoint {path}: cannot read {name} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); move the checkpoint "
                                f"away to resume from an older one") from None

        state = Checkpointer.read_state(path)
        state["adapter"] = load("adapter.safetensors", lambda p: load_file(str(p)))
        state["optimizer"] = load("optimizer.pt", lambda p: torch.load(p, weights_only=True))
        state["plugins"] = load("plugins.pt", lambda p: torch.load(p, weights_only=False))
        state["rng_tensors"] = load("rng.pt", lambda p: torch.load(p, weights_only=True))
        return state


def _state_problem(state) -> str | None:
    """What is wrong with a parsed state.json (None when it has the shape `Checkpointer.save` writes)."""
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    position = state.get("position")
    if not isinstance(position, dict):
        return "no 'position' object"
    for key in ("exp_index", "epoch", "microbatch", "exp_step"):
        value = position.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"position.{key} is {value!r}, not a count"
    step = state.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"global_step is {step!r}, not a count"
    rng = state.get("rng")
    if not (isinstance(rng, dict) and isinstance(rng.get("python"), list) and len(rng["python"]) == 3
            and isinstance(rng.get("numpy"), list) and len(rng["numpy"]) == 5):
        return "no python/numpy random states under 'rng'"
    results = state.get("results")
    try:
        store = ResultsStore.from_json(results)
        if not all(isinstance(row, list) and all(isinstance(c, dict) for c in row) for row in store.rows):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError):
        return "no results object with run, tasks, experiences and rows of scores"
    return None


def load_trainable(model, tensors: dict[str, torch.Tensor]) -> None:
    """The checkpoint's whole tensors into the model; a sharded model keeps its shard of each (every rank
    reads the same checkpoint)."""
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise UserError(f"checkpoint does not match the model's trainable parameters "
                        f"(missing {missing[:3]}, unexpected {extra[:3]}): was the adapter config changed?")
    if engine.fsdp_root(model) is not None:
        engine.load_full_trainable(model, tensors)
        return
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device, p.dtype))


class CheckpointPlugin(SupervisedPlugin, supports_distributed=True):
    """Mid-experience checkpoints every `every` optimizer steps, and restoring a checkpoint on resume."""

    def __init__(self, checkpointer: Checkpointer, store, *, every: int = 0, plugins=(), dist=None):
        super().__init__()
        self.checkpointer, self.store, self.every = checkpointer, store, every
        self.stateful = list(plugins)
        self.dist = dist
        self.pending: dict | None = None      # a checkpoint to restore at the right moment

    def position(self, strategy, *, completed: bool) -> dict:
        if completed:
            return {"exp_index": strategy.exp_index + 1, "epoch": 0, "microbatch": 0, "exp_step": 0}
        return {"exp_index": strategy.exp_index, "epoch": strategy.exp_epoch,
                "microbatch": strategy.exp_microbatch, "exp_step": strategy.exp_step}

    def save(self, strategy, *, completed: bool) -> None:
        gathered = None
        if engine.fsdp_root(strategy.model) is not None:   # collectives: every rank gathers, rank 0 writes
            gathered = {"adapter": engine.full_trainable_state(strategy.model),
                        "optimizer": engine.full_optimizer_state(strategy.model, strategy.optimizer)}
        if self.dist is None or self.dist.is_main:
            self.checkpointer.save(strategy, store=self.store, position=self.position(strategy, completed=completed),
                                   plugins=self.stateful, gathered=gathered)
        if self.dist is not None:
            self.dist.barrier()

    def after_update(self, strategy, **kwargs):
        if self.every and strategy.exp_step % self.every == 0 and strategy.exp_step < strategy.steps_in_exp:
            self.save(strategy, completed=False)

    # ---------------------------------------------------------------- resume
    def restore_weights(self, strategy, state: dict) -> None:
        """Called before training starts: weights, plugin state and the mid-experience position."""
        load_trainable(strategy.model, state["adapter"])
        for plugin in self.stateful:
            saved = state["plugins"].get(type(plugin).__name__)
            if saved is not None and hasattr(plugin, "load_state_dict"):
                plugin.load_state_dict(saved)
        strategy.global_step = state["global_step"]
        position = state["position"]
        if position["exp_step"] or position["microbatch"] or position["epoch"]:
            strategy.resume_position = dict(position)
        self.pending = state

    def before_training_exp(self, strategy, **kwargs):
        if self.pending is not None and not strategy.resume_position:
            self._restore_runtime(strategy, restore_optimizer=not strategy.cfg.reset_optimizer)

    def before_training_epoch(self, strategy, **kwargs):
        if self.pending is not None and strategy.resume_position:
            self._restore_runtime(strategy, restore_optimizer=True)

    def _restore_runtime(self, strategy, *, restore_optimizer: bool) -> None:
        state, self.pending = self.pending, None
        if restore_optimizer and engine.fsdp_root(strategy.model) is not None:   # keyed by name, whole
            engine.load_full_optimizer(strategy.model, strategy.optimizer, state["optimizer"]["optimizer"])
        elif restore_optimizer:
            strategy.optimizer.load_state_dict(state["optimizer"]["optimizer"])
        if restore_optimizer:
            if state["optimizer"]["scheduler"] is not None and strategy.resume_position:
                strategy.scheduler.load_state_dict(state["optimizer"]["scheduler"])
        set_rng_state(state["rng_tensors"], state["rng"])
