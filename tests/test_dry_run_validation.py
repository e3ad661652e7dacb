"""The dry run validates with the run's own path (training/runner.py `prepare` + `load_inputs`): what the run
refuses before training, the dry run refuses with the same `error:` line, and a plug-in whose trainable count
is not its `expected_params` is one error line in both (the run checks it again on the real weights)."""

from __future__ import annotations

import textwrap

import pytest

from clsharelora import registry
from clsharelora.cli import main
from conftest import TINY_STREAM

BAD = {
    "gsm8k protocol": (TINY_STREAM.replace("max_new_tokens: 6}", "max_new_tokens: 6, protocol: sedded}"),
                       "gsm8k: protocol must be one of"),
    "mmlu subject": (TINY_STREAM.replace("max_length: 256}\n    eval: {task: mmlu",
                                         "max_length: 256, options: {subjects: [astronomy, anatomyy]}}\n"
                                         "    eval: {task: mmlu"),
                     "mmlu: unknown subjects ['anatomyy']"),
}


def _error(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_dry_run_refuses_what_the_run_refuses(case, tmp_path, capsys):
    text, message = BAD[case]
    assert text != TINY_STREAM
    (tmp_path / "s.yaml").write_text(text)
    args = ["run", "--stream", str(tmp_path / "s.yaml"), "--model", "tiny-llama", "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert main(args + ["--dry-run"]) == 2
    dry = _error(capsys)
    assert main(args) == 2
    real = _error(capsys)
    assert len(dry) == 1 and dry == real and message in dry[0], (dry, real)
    assert not (tmp_path / "out").exists()


def plugin_folder(tmp_path, monkeypatch, source: str):
    """A plug-in file in a $CLSHARELORA_STRATEGY_PATH folder, discovered afresh in this process; the registry
    is a copy for the test, so its strategies do not outlive it."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    path = folder / "user_adapter.py"
    path.write_text(textwrap.dedent(source))
    registry.discover()   # the built-ins register once per process: into the real table, before the copy
    monkeypatch.setenv(registry.PATH_ENV, str(folder))
    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "_REGISTRY", {kind: dict(table) for kind, table in registry._REGISTRY.items()})
    monkeypatch.setattr(registry, "_FAILED", dict(registry._FAILED))
    return path


MISCOUNTED = '''
import torch
from clsharelora.registry import register
from strategies_lora import LoRA


@register("lora-{kind}", "adapter")
class Miscounted(LoRA):
    """LoRA whose count is off: always (miscounted), or only on real weights (grows)."""

    def expected_params(self, config):
        return super().expected_params(config) + ({kind!r} == "miscounted")

    def apply(self, model):
        model = super().apply(model)
        if {kind!r} == "grows" and next(model.parameters()).device.type != "meta":
            model.get_base_model().lm_head.weight.requires_grad_(True)
        return model
'''.replace("from strategies_lora import LoRA", "from clsharelora.strategies.lora import LoRA")


def test_a_wrong_expected_params_is_one_error_line_in_the_dry_run(tmp_path, monkeypatch, capsys, tiny_stream_file):
    path = plugin_folder(tmp_path, monkeypatch, MISCOUNTED.format(kind="miscounted"))
    code = main(["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--strategy", "lora-miscounted",
                 "--out", str(tmp_path / "out"), "--dry-run"])
    error = _error(capsys)
    assert code == 2 and len(error) == 1, error
    assert "expected_params" in error[0] and str(path) in error[0] and "(-1)" in error[0], error[0]
    assert not (tmp_path / "out").exists()


def test_the_run_checks_the_count_on_the_real_weights(tmp_path, monkeypatch, capsys, tiny_stream_file):
    """The meta-device check passes (the plug-in differs only on real weights); the run checks again after
    the adapter is applied to the loaded model, before the run directory exists."""
    plugin_folder(tmp_path, monkeypatch, MISCOUNTED.format(kind="grows"))
    code = main(["run", "--stream", str(tiny_stream_file), "--model", "tiny-llama", "--strategy", "lora-grows",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    error = _error(capsys)
    assert code == 2 and len(error) == 1 and "expected_params" in error[0], error
    assert not (tmp_path / "out").exists()
