"""MFU of `make bench` (issue #28): the measured matmul peak, 6·N·T, and the generated docs block."""

from __future__ import annotations

import json

import pytest
import torch

from clsharelora.bench import mfu


def test_matmul_peak_is_two_n_cubed_over_the_fastest_call():
    peak = mfu.matmul_peak("cpu", torch.float32, 64, warmup=1, reps=3)
    assert peak["n"] == 64 and peak["dtype"] == "float32" and peak["flop_per_call"] == 2 * 64 ** 3
    assert peak["seconds"]["n"] == 3
    assert peak["peak_flop_per_s"] == pytest.approx(2 * 64 ** 3 / peak["seconds"]["min"])
    assert "float32 64 x 64 square matmul" in mfu.peak_line(peak)


def test_step_mfu_is_six_n_t_over_time_over_peak():
    peak = {"peak_flop_per_s": 1e12}
    m = mfu.step_mfu(2.0, n_params=1000, tokens=512, peak=peak)
    assert m["flop"] == 6 * 1000 * 512
    assert m["achieved_flop_per_s"] == pytest.approx(6 * 1000 * 512 / 2.0)
    assert m["mfu"] == pytest.approx(6 * 1000 * 512 / 2.0 / 1e12)


def test_docs_block_is_what_the_generator_makes_from_the_committed_results():
    text = mfu.DOC.read_text()
    start, end = text.index(mfu.START) + len(mfu.START), text.index(mfu.END)
    payload = json.loads(mfu.RESULTS.read_text())
    assert text[start:end].strip("\n") == "\n".join(mfu.doc_block(payload, "bench/results/adapters.json"))


def test_write_doc_replaces_only_the_block(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text(f"before\n{mfu.START}\nold typed line\n{mfu.END}\nafter\n")
    payload = {"machine": {"date": "d", "cpu": "c", "torch": "t", "torch_threads": 1},
               "result": {"batch": 2, "seq": 4, "mfu_peak": {"peak_flop_per_s": 1e9, "dtype": "float32", "n": 8,
                                                            "reps": 1, "warmup": 0, "threads": 1},
                          "variants": {"lora": {"mfu": mfu.step_mfu(1.0, 10, 8, {"peak_flop_per_s": 1e9})}}}}
    results = tmp_path / "adapters.json"
    results.write_text(json.dumps(payload))
    mfu.write_doc(doc, results)
    out = doc.read_text()
    assert out.startswith("before\n") and out.endswith("after\n") and "old typed line" not in out
    assert "N = 10  6·N·T = 0.000 TFLOP" in out and "MFU 0.000" in out


def test_missing_results_is_one_error_line(tmp_path, capsys):
    assert mfu.main(["--results", str(tmp_path / "none.json"), "--doc", str(tmp_path / "d.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --results") and err.count("\n") == 1
