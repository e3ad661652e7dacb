"""Plug-ins fail alone: a broken file costs only its own strategies, duplicates are errors naming both
files, a missing plug-in folder is a warning, unknown adapter options are never dropped silently, and
`clsharelora list` reads names without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from clsharelora.paths import PROJECT_ROOT

GOOD = '''
from clsharelora.registry import register
from clsharelora.training.cl_base import CLStrategy


@register("{name}", "cl")
class Good(CLStrategy):
    """A do-nothing CL method."""

    defaults = {{"strength": 1.0}}
    option_help = {{"strength": "how hard it does nothing"}}

    def plugins(self, context):
        return []
'''


def cli(*args, path: str | None = None, code: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("CLSHARELORA_STRATEGY_PATH", None)
    if path is not None:
        env["CLSHARELORA_STRATEGY_PATH"] = path
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "clsharelora.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=PROJECT_ROOT)


def write(folder, name, text):
    (folder / name).write_text(textwrap.dedent(text))
    return folder / name


@pytest.mark.parametrize("body, error", [
    ("def broken(:\n", "SyntaxError"),
    ("import not_a_module_anywhere\n" + GOOD.format(name="bad-import"), "ModuleNotFoundError"),
    (GOOD.format(name="raises") + "\nraise RuntimeError('plug-in exploded at import')\n", "RuntimeError"),
    ("import sys\nsys.exit(3)\n", "SystemExit"),
])
def test_a_broken_plugin_is_one_warning_and_the_cli_lives(tmp_path, body, error):
    broken = write(tmp_path, "broken.py", body)
    write(tmp_path, "fine.py", GOOD.format(name="fine-cl"))
    done = cli("list", path=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "fine-cl" in done.stdout and "lora" in done.stdout and "Traceback" not in done.stderr
    if error == "SyntaxError":  # the static read sees it without importing
        warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and str(broken) in warnings[0] and error in warnings[0], done.stderr
    verbose = cli("list", "--verbose", path=str(tmp_path))
    assert verbose.returncode == 0, verbose.stderr
    warnings = [line for line in verbose.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(broken) in warnings[0] and error in warnings[0], verbose.stderr
    assert "strength = 1.0 (float)  how hard it does nothing" in verbose.stdout


def test_requesting_a_strategy_of_a_broken_plugin_is_an_error_naming_the_file(tmp_path):
    broken = write(tmp_path, "broken.py", GOOD.format(name="raises") + "\nraise RuntimeError('exploded')\n")
    done = cli("run", "--cl", "raises", "--print-config", path=str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(broken) in error[0] and "RuntimeError: exploded" in error[0]


def test_a_plugin_reusing_a_builtin_name_is_an_error_naming_both_files(tmp_path):
    clash = write(tmp_path, "clash.py", GOOD.format(name="naive"))
    done = cli("list", path=str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(clash) in done.stderr and str(PROJECT_ROOT / "strategies" / "naive.py") in done.stderr


def test_two_plugins_with_one_name_are_an_error_naming_both_files(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    a = write(one, "a.py", GOOD.format(name="twin"))
    b = write(two, "b.py", GOOD.format(name="twin"))
    done = cli("list", path=os.pathsep.join([str(one), str(two)]))
    assert done.returncode == 2 and str(a) in done.stderr and str(b) in done.stderr, done.stderr


def test_a_dynamic_duplicate_found_only_at_import_is_an_error_too(tmp_path):
    write(tmp_path, "dyn.py", GOOD.format(name="lora").replace('register("lora", "cl")',
                                                             'register("lo" + "ra", "adapter")'))
    done = cli("list", path=str(tmp_path))
    assert done.returncode == 2 and "defined twice" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_plugin_folder_is_a_warning(tmp_path):
    missing = tmp_path / "no-such-folder"
    done = cli("list", path=str(missing))
    assert done.returncode == 0 and "lora" in done.stdout
    assert [line for line in done.stderr.splitlines() if line.startswith("warning:") and str(missing) in line]


def test_unknown_adapter_options_in_a_config_are_an_error_with_did_you_mean(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("adapter: {name: sharelora, variant: share_a, r: 8, dropuot: 0.1}\n")
    done = cli("compare", "--config", str(config), "--strategies", "lora,sharelora", "--out", str(tmp_path / "o"),
               "--dry-run")
    assert done.returncode == 2 and "dropuot" in done.stderr and "dropout" in done.stderr, done.stderr
    assert not (tmp_path / "o").exists()
    # the rule: options of the strategy the block names are dropped when switching to one that lacks them
    config.write_text("adapter: {name: sharelora, variant: share_a, r: 8}\n")
    done = cli("run", "--config", str(config), "--strategy", "lora", "--print-config")
    assert done.returncode == 0, done.stderr
    assert "variant" not in done.stdout and "r: 8" in done.stdout


def test_list_and_help_import_no_torch():
    probe = ("import sys, contextlib, io\nfrom clsharelora.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    main(['list'])\n"
             "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'avalanche') if m in sys.modules))")
    done = cli(code=probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_builtin_option_has_help_text():
    from clsharelora import registry

    builtin = (PROJECT_ROOT / "strategies").resolve()
    for kind in registry.KINDS:
        for name in registry.known(kind):
            cls = registry.get(name, kind)
            if not registry._source(cls).startswith(str(builtin)):  # another test's plug-in example
                continue
            missing = sorted(set(cls.defaults) - set(getattr(cls, "option_help", {})))
            assert not missing, f"{kind} {name}: options without help: {missing}"
