"""`--help` says what each command takes: report and bench show their own options, every option of run and
compare has help text, and the top-level description names every command."""

from __future__ import annotations

import argparse

import pytest

from clsharelora.cli import build_parser, main


@pytest.mark.parametrize("command, options", [("report", ("--out", "--reference", "--title")),
                                               ("bench", ("--only", "--out"))])
def test_report_and_bench_help_show_their_options(command, options, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"clsharelora {command}" in out
    for option in options:
        assert option in out, out


def _subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", ["run", "compare", "study"])
def test_every_option_has_help_text(command):
    missing = [a.option_strings[0] for a in _subparser(command)._actions
               if a.option_strings and not (a.help or "").strip()]
    assert not missing, f"{command}: options without help: {missing}"


def test_the_description_names_every_command():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"run", "compare", "study", "report", "list", "bench"} <= set(commands)
    for command in commands:
        assert command in parser.description, (command, parser.description)
