"""Row 0 (every task scored before training) computed once and shared by the runs of one compare or study.

Before its first experience every run scores every task on its untrained model. LoRA-family adapters start
at a zero delta (B = 0), so that model computes the base model's function and row 0 is the same in every
run of a compare: LoRA's and ShareA's demo row 0 were identical bit for bit, per item. Scoring it once
saves a fifth of the demo's scoring and most of a study's row-0 cost (one distinct row 0 per seed).

Nothing is shared on trust. Each task's per-item results are stored under a key over everything that
determines them: the task and its evaluator options, the items themselves (their full records), the model
name, the tokenizer's vocabulary, the clsharelora sources, the torch and transformers versions, device
type, dtype and thread count, and a fingerprint of the untrained model's *function*: the bytes of its
float32 logits on a fixed padded probe batch, as this run computes them. An adapter or CL method that
changes the function at initialisation (anything but an exact zero delta) changes those bytes, so its run
finds no entry and scores its own row 0.

Runs of one compare go side by side, so each key has a lock file (flock, dropped by the kernel when its
holder dies): a run takes the lock of a task nobody is scoring, scores it and writes the entry atomically;
a task whose lock is held is left for later, and the run then waits for that lock and reads the entry, or
scores the task itself when the holder died before writing it. Two runs thus split row 0 between them.
Single-process runs only (`world_size == 1`); the entries live in the folder `compare` / `study` pass as
`--shared-row0` (OUT/.compare/row0, OUT/.row0), never in a run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .. import atomic
from ..evaluation.base import Evaluator
from ..evaluation.items import Items, check_items
from .results import write_arrays

PROBE_SEED = 20261128
PROBE_LENGTHS = (24, 17)   # two rows of different lengths: the probe goes through padding and the mask


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


@torch.inference_mode()
def function_fingerprint(model, tokenizer) -> str:
    """sha256 of the model's float32 logits on a fixed probe batch: two left-padded rows of seeded token ids
    (eval mode; the caller's autocast applies). Bit-identical functions give the same fingerprint."""
    from ..evaluation.generation import layout, model_device, pad_id

    gen = torch.Generator().manual_seed(PROBE_SEED)
    vocab = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
    rows = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in PROBE_LENGTHS]
    ids, mask = layout([], rows, pad_id(tokenizer), model_device(model))
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    finally:
        model.train(was_training)
    real = logits[mask.bool()]   # padded positions carry no meaning
    return _sha(real.cpu().numpy().tobytes())


def code_fingerprint() -> str:
    """sha256 over the clsharelora package's Python sources (any code change is a new key)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    return _sha(json.dumps(sorted(tokenizer.get_vocab().items())), str(tokenizer.all_special_tokens))


def evaluator_fingerprint(evaluator: Evaluator, options: dict) -> str:
    """The task, its evaluator options and its items' full records."""
    records = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else repr(r) for r in evaluator.records]
    return _sha(evaluator.task, json.dumps(options, sort_keys=True, default=str),
                json.dumps(records, sort_keys=True, default=str))


def _load_items(path: Path) -> Items:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@contextlib.contextmanager
def _flock(path: Path, *, block: bool) -> Iterator[bool]:
    """Hold an exclusive flock on `path` for the block; yields False (nothing held) when `block` is False
    and another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class SharedRow0:
    """One run's view of the folder of shared row-0 entries: <key>.npz (per-item results) + <key>.json
    (which run scored it), for that run's evaluators and settings."""

    def __init__(self, folder: str | Path, run_name: str, tokenizer, evaluators: Sequence[Evaluator],
                 options: Sequence[dict], *, model_name: str, dtype: str, autocast: bool):
        self.folder = Path(folder)
        self.run_name = run_name
        self.tokenizer = tokenizer
        self.evaluators = list(evaluators)
        self.options = list(options)
        self.model_name, self.dtype, self.autocast = model_name, dtype, autocast

    def keys(self, model) -> list[str]:
        """One key per evaluator, for `model` as it is now (see the module docstring for what goes in)."""
        import transformers

        from ..evaluation.generation import eval_context, model_device

        with eval_context(model, autocast=self.autocast):
            function = function_fingerprint(model, self.tokenizer)
        setting = _sha(self.model_name, self.dtype, model_device(model).type, str(torch.get_num_threads()),
                       torch.__version__, transformers.__version__, code_fingerprint(),
                       tokenizer_fingerprint(self.tokenizer), function)
        return [_sha(setting, evaluator_fingerprint(ev, opt)) for ev, opt in zip(self.evaluators, self.options)]

    def score(self, model, compute: Callable[[Evaluator], Items]) -> tuple[list[Items], dict[str, dict]]:
        """Every evaluator's per-item results over all its items: read where an entry exists, else
        `compute(evaluator)` and stored; plus {task: {"key", "scored_by"}} for the tasks read from the folder."""
        keys = self.keys(model)
        self.folder.mkdir(parents=True, exist_ok=True)
        results: list[Items | None] = [None] * len(self.evaluators)
        sources: dict[str, dict] = {}
        deferred = []
        for i, (ev, key) in enumerate(zip(self.evaluators, keys)):
            with _flock(self.folder / f"{key}.lock", block=False) as held:
                if held:
                    results[i] = self._read_or_compute(ev, key, compute, sources)
                else:   # another run is scoring it now: come back when the rest is done
                    deferred.append(i)
        for i in deferred:
            with _flock(self.folder / f"{keys[i]}.lock", block=True):
                results[i] = self._read_or_compute(self.evaluators[i], keys[i], compute, sources)
        return results, sources  # type: ignore[return-value]

    def _read_or_compute(self, ev: Evaluator, key: str, compute, sources: dict) -> Items:
        data, meta = self.folder / f"{key}.npz", self.folder / f"{key}.json"
        if data.is_file() and meta.is_file():
            try:
                info = json.loads(meta.read_text())
                items = check_items(_load_items(data), len(ev.records), ev.task)
                if info.get("key") == key:
                    sources[ev.task] = {"key": key, "scored_by": info.get("scored_by")}
                    return items
            except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
                pass   # an unreadable entry is scored again and replaced
        items = compute(ev)
        write_arrays(data, items)
        atomic.write_json(meta, {"key": key, "task": ev.task, "scored_by": self.run_name})
        return items
