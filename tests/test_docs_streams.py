"""docs/streams.md is the stream format's reference: its examples parse, and every key the code accepts
(stream, experience and train keys, loader options, evaluator options) is named in it."""

from __future__ import annotations

import inspect
import re

import yaml

from clsharelora.benchmarks.stream import EXPERIENCE_KEYS, STREAM_KEYS, TRAIN_KEYS, parse_stream
from clsharelora.data import _MODULES
from clsharelora.evaluation.tasks import TASKS, evaluator_class
from clsharelora.paths import PROJECT_ROOT

DOC = (PROJECT_ROOT / "docs" / "streams.md").read_text()
RUN_SUPPLIED = {"data_root", "seed", "records", "shot_pool"}


def test_examples_parse():
    blocks = re.findall(r"<!-- stream-example -->\s*```yaml\n(.*?)```", DOC, re.S)
    assert blocks
    for block in blocks:
        stream = parse_stream(yaml.safe_load(block), "docs/streams.md")
        assert stream.experiences


def test_every_accepted_key_is_documented():
    named = set(re.findall(r"`([a-z0-9_]+)`", DOC))
    missing = {k for k in (*STREAM_KEYS, *EXPERIENCE_KEYS, *TRAIN_KEYS) if k not in named}
    for module in _MODULES.values():
        missing |= {k for k in module.KWARGS if k not in named}
        missing |= {b for b in [module.NAME] if b not in named}
    for task in TASKS:
        params = inspect.signature(evaluator_class(task).__init__).parameters.values()
        missing |= {p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in RUN_SUPPLIED
                    and p.name not in named}
    assert not missing, f"docs/streams.md does not document: {sorted(missing)}"
