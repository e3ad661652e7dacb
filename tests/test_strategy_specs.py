"""A strategy spec of compare/study means the same run under any config: `lora` trains naively whatever the
config's `cl:` block says, CL options go in the spec (`lora+ewc(ewc_lambda=100)`), and two specs that resolve
to the same run are one error before anything is created."""

from __future__ import annotations

import pytest
import yaml

from clsharelora.cli import _compare_configs, build_parser, main
from clsharelora.study.grid import load_study


def _config(tmp_path, tiny_stream_file, cl="{name: replay, mem_size: 8}"):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: tiny-llama\nstream: {tiny_stream_file}\nadapter: {{name: sharelora, r: 2}}\ncl: {cl}\n")
    return path


def _configs(tmp_path, config, strategies, *extra):
    args = build_parser().parse_args(["compare", "--config", str(config), "--strategies", strategies,
                                      "--out", str(tmp_path / "out"), *extra])
    return _compare_configs(args)


def test_a_spec_without_cl_trains_naively_whatever_the_config_says(tmp_path, tiny_stream_file, capsys):
    lora, replay, ewc = _configs(tmp_path, _config(tmp_path, tiny_stream_file),
                                 "lora,lora+replay,sharelora:share_b+ewc(ewc_lambda=100, mode=online)")
    assert lora.cl == {"name": "naive"} and lora.adapter == {"name": "lora", "r": 2}
    assert replay.cl == {"name": "replay"}          # the spec's method at its defaults, not the config's options
    assert ewc.cl == {"name": "ewc", "ewc_lambda": 100, "mode": "online"}
    assert ewc.adapter == {"name": "sharelora", "r": 2, "variant": "share_b"}
    assert [c.name for c in (lora, replay, ewc)] == ["lora", "lora-replay",
                                                     "sharelora-share_b-ewc-ewc_lambda_100-mode_online"]
    assert "the config's cl: block" in capsys.readouterr().err   # said once, not silently dropped


@pytest.mark.parametrize("strategies, pair", [
    ("lora,lora+naive", "'lora' and 'lora+naive'"),
    ("sharelora,sharelora:share_a", "'sharelora' and 'sharelora:share_a'"),    # share_a is the default
    ("lora+ewc,lora+ewc(ewc_lambda=1000)", "'lora+ewc' and 'lora+ewc(ewc_lambda=1000)'"),
])
def test_two_specs_of_one_run_are_one_error_and_write_nothing(tmp_path, tiny_stream_file, capsys, strategies,
                                                              pair):
    code = main(["compare", "--config", str(_config(tmp_path, tiny_stream_file)), "--strategies", strategies,
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and pair in err[0] and "same run" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("strategies, extra, message", [
    ("lora+ewc(ewc_lambda)", [], "is not KEY=VALUE"),
    ("lora+ewc(ewc_lambda=1,ewc_lambda=2)", [], "given twice"),
    ("lora,,sharelora", [], "empty entry"),
    ("lora,lora+ewc", ["--set", "cl.ewc_lambda=5"], "from its spec"),
])
def test_bad_specs_are_one_error(tmp_path, tiny_stream_file, capsys, strategies, extra, message):
    code = main(["compare", "--config", str(_config(tmp_path, tiny_stream_file)), "--strategies", strategies,
                 "--out", str(tmp_path / "out"), *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_study_spec_does_not_inherit_the_base_cl_either(tmp_path, tiny_stream_file, capsys):
    base = _config(tmp_path, tiny_stream_file)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"base": str(base), "seeds": [0], "strategies": [
        "lora", "lora+replay(mem_size=4)", {"label": "vera", "adapter": {"name": "vera"}}]}))
    lora, replay, vera = load_study(study).strategies
    assert (lora.cl, replay.cl, vera.cl) == ({"name": "naive"}, {"name": "replay", "mem_size": 4}, {"name": "naive"})
    study.write_text(yaml.safe_dump({"base": str(base), "seeds": [0], "strategies": [
        "lora", {"label": "plain", "adapter": "lora"}]}))
    with pytest.raises(Exception, match="'lora' and 'plain' resolve to the same run"):
        load_study(study)
