"""Issue 25 item 3: a config, stream, strategy-name or strategy-option error is reported before torch (or
transformers) is imported, whose import is most of the wait on a loaded machine. The check is on
sys.modules, which does not depend on the machine's load; the wall times are a bench part (`make bench`,
part "errors")."""

from __future__ import annotations

import json
import subprocess
import sys

from clsharelora.config import SCHEDULES


def test_the_schedule_names_are_transformers_own():
    from transformers.trainer_utils import SchedulerType

    assert list(SCHEDULES) == [s.value for s in SchedulerType]


PROBE = """
import contextlib, io, json, sys
from clsharelora.cli import main
codes = []
with contextlib.redirect_stderr(io.StringIO()) as err:
    for args in sys.argv[1:]:
        codes.append(main(json.loads(args)))
print(json.dumps({"codes": codes, "errors": err.getvalue().splitlines(),
                  "heavy": sorted(m for m in ("torch", "transformers", "peft", "avalanche") if m in sys.modules)}))
"""


def test_config_stream_and_strategy_name_errors_import_no_torch(tmp_path, tiny_stream_file):
    config = tmp_path / "c.yaml"
    config.write_text("trian: {}\n")
    stream = tmp_path / "s.yaml"
    stream.write_text("name: s\nexperiences:\n  - train: {benchmark: gsm9k}\n    eval: {task: gsm8k}\n")
    run = ["run", "--model", "tiny-llama", "--out", str(tmp_path / "out")]
    cases = [[*run, "--stream", str(tiny_stream_file), "--config", str(config)],
             [*run, "--stream", str(tiny_stream_file), "--set", "train.schedule=cosin"],
             [*run, "--stream", str(tiny_stream_file), "--set", f"seed={2 ** 32}"],
             [*run, "--stream", str(stream)],
             [*run, "--stream", str(tiny_stream_file), "--strategy", "sharelor"],
             [*run, "--stream", str(tiny_stream_file), "--cl", "replya"],
             [*run, "--stream", str(tiny_stream_file), "--set", "adapter.rr=4"],
             [*run, "--stream", str(tiny_stream_file), "--strategy", "lora", "--cl", "replay", "--set", "cl.mem=3"]]
    done = subprocess.run([sys.executable, "-c", PROBE, *map(json.dumps, cases)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["codes"] == [2] * len(cases), result
    assert [line.split(":")[0] for line in result["errors"]] == ["error"] * len(cases), result["errors"]
    assert result["heavy"] == [], result
    assert "unknown option 'rr' for adapter strategy 'sharelora' (did you mean 'r'?)" in result["errors"][-2]
    assert "unknown option 'mem' for cl strategy 'replay' (did you mean 'mem_size'?)" in result["errors"][-1]
    assert not (tmp_path / "out").exists()


def test_the_static_read_of_options_equals_the_imported_classes():
    """The option names refused before import (clsharelora/plugin_options.py) are the classes' own, for
    every built-in strategy; a plug-in file it cannot read gives None (checked after import instead)."""
    from clsharelora import plugin_options, registry

    for f in registry.plugin_files():
        for kind, name in f.names:
            assert plugin_options.read_defaults(f.path, kind, name) == registry.get(name, kind).defaults, (kind, name)
