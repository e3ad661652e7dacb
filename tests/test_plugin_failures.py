"""A plug-in whose own code raises (apply(), a CL plug-in mid-training) is one `error:` line naming the
plug-in file and line, exit 2, with the full traceback in the run's log.txt once the run directory exists;
`compare` goes on with the other strategies and ends with a table of which failed and why."""

from __future__ import annotations

import json

from clsharelora.cli import main
from test_dry_run_validation import plugin_folder

PLUGINS = '''
from avalanche.core import SupervisedPlugin

from clsharelora.registry import register
from clsharelora.strategies.lora import LoRA
from clsharelora.training.cl_base import CLStrategy


@register("lora-broken", "adapter")
class Broken(LoRA):
    """LoRA whose apply() raises."""

    def apply(self, model):
        raise RuntimeError("apply exploded")   # APPLY_LINE


class Boom(SupervisedPlugin):
    def after_training_iteration(self, strategy, **kwargs):
        raise ValueError("boom mid-training")   # BOOM_LINE


@register("boom", "cl")
class BoomMethod(CLStrategy):
    """A CL method whose Avalanche plug-in raises in the first training step."""

    def plugins(self, context):
        return [Boom()]
'''
STREAM = """name: one
experiences:
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 2, max_steps: 1, max_length: 256}
    eval: {task: mmlu, n: 2, shots: 0}
"""


def _line(marker: str) -> int:
    return next(i for i, text in enumerate(PLUGINS.splitlines(), 1) if marker in text)


def _errors(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_apply_raising_is_one_error_line_naming_the_plugin_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                                              tiny_stream_file):
    path = plugin_folder(tmp_path, monkeypatch, PLUGINS)
    code = main(["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--strategy", "lora-broken",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    errors = _errors(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1, errors
    assert f"plug-in {path}, line {_line('APPLY_LINE')} (in apply): RuntimeError: apply exploded" in errors[0]
    assert not (tmp_path / "out").exists()


def test_compare_goes_on_past_failing_plugins_and_ends_with_a_table(tmp_path, monkeypatch, capsys):
    path = plugin_folder(tmp_path, monkeypatch, PLUGINS)
    (tmp_path / "s.yaml").write_text(STREAM)
    (tmp_path / "c.yaml").write_text(f"model: tiny-llama\nstream: {tmp_path / 's.yaml'}\nadapter: {{r: 2}}\n"
                                     "train: {batch_size: 2, global_batch: 2}\neval: {batch_size: 2}\n")
    out = tmp_path / "out"
    code = main(["compare", "--config", str(tmp_path / "c.yaml"), "--strategies", "lora-broken,lora+boom,lora",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    errors = _errors(err)
    assert code == 2, err
    assert len(errors) == 2, errors
    assert errors[0].startswith("error: lora-broken: plug-in ") and "apply exploded" in errors[0]
    log = out / "lora-boom" / "log.txt"
    assert f"plug-in {path}, line {_line('BOOM_LINE')} (in after_training_iteration): ValueError: boom mid-training " \
           f"(traceback in {log})" in errors[1]
    assert "Traceback (most recent call last)" in log.read_text() and "boom mid-training" in log.read_text()
    # the strategy after the failures ran to the end
    assert json.loads((out / "lora" / "results.json").read_text())["run"]["cl"] == "naive"
    table = err[err.index("compare: 2 of 3 strategies failed"):].splitlines()
    assert [row.split()[:2] for row in table[1:]] == [["lora-broken", "failed"], ["lora-boom", "failed"],
                                                      ["lora", "ok"]], table
