"""`clippy-rt bench`: outputs, exit codes, and one clear error line for bad input."""

from __future__ import annotations

import json

import torch

from clippy_rt.cli.main import main as cli

FAST = ["--warmup-ms", "0", "--duration-s", "0", "--min-iters", "2", "--threads", "1", "--no-progress"]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_table_json_and_csv(tiny_model_dir, tmp_path, capsys):
    out_json, out_csv = tmp_path / "bench.json", tmp_path / "bench.csv"
    code = cli(["bench", str(tiny_model_dir), "--stage", "image,text", "--batch", "1,2", "--size", "32",
                "--prompts", "4", *FAST, "--json", str(out_json), "--csv", str(out_csv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "median" in captured.out and "prompts/s" in captured.out
    assert "RANDOM weights" in captured.err
    report = json.loads(out_json.read_text())
    assert [(r["stage"], r["variant"], r["batch"]) for r in report["results"]] == [
        ("image", "forward", 1), ("image", "forward", 2), ("text", "cold", None), ("text", "cached", None)]
    assert all(r["status"] == "ok" and r["iterations"] >= 2 for r in report["results"])
    assert report["settings"]["batches"] == [1, 2] and report["settings"]["threads"] == 1
    assert len(out_csv.read_text().splitlines()) == 5


def test_random_arch(capsys):
    code = cli(["bench", "--arch", "tiny", "--stage", "text", "--prompts", "2", *FAST])
    assert code == 0
    assert "text" in capsys.readouterr().out


def test_unknown_backend_is_one_error_line(tiny_model_dir, capsys):
    code = cli(["bench", str(tiny_model_dir), "--backend", "torch,tflite", *FAST])
    assert code == 1
    line = _one_error_line(capsys)
    assert "unknown backend 'tflite'" in line and "torch, onnxruntime, tensorrt, openvino" in line


def test_missing_engine_dir_is_one_error_line(tmp_path, capsys):
    code = cli(["bench", str(tmp_path / "engines" / "b16"), "--backend", "tensorrt", *FAST])
    assert code == 1
    assert "no such model, ONNX or engine directory" in _one_error_line(capsys)


def test_no_model_is_one_error_line(capsys):
    assert cli(["bench", *FAST]) == 1
    assert "--arch" in _one_error_line(capsys)


def test_bad_baseline_and_timing_are_one_error_line(tiny_model_dir, capsys):
    assert cli(["bench", str(tiny_model_dir), "--baseline", "torch", *FAST]) == 1
    assert "BACKEND:PRECISION" in _one_error_line(capsys)
    assert cli(["bench", str(tiny_model_dir), "--min-iters", "0", "--no-progress"]) == 1
    assert "--min-iters" in _one_error_line(capsys)


def test_cuda_without_cuda_lists_skips_and_fails(tiny_model_dir, capsys):
    if torch.cuda.is_available():
        return _cuda_runs(tiny_model_dir, capsys)
    code = cli(["bench", str(tiny_model_dir), "--device", "cuda", "--stage", "image", *FAST])
    captured = capsys.readouterr()
    assert code == 1  # nothing could run
    assert "no configuration ran" in captured.out
    assert "CUDA is not available on this machine (1): image forward torch fp32 cuda" in captured.out


def _cuda_runs(tiny_model_dir, capsys):
    code = cli(["bench", str(tiny_model_dir), "--device", "cuda", "--stage", "image", *FAST])
    assert code == 0
    assert "gpu med" in capsys.readouterr().out


def test_ctrl_c_prints_what_finished_and_exits_130(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import clippy_rt.cli.bench as bench_cli

    def interrupted_progress(items, label, **kwargs):
        for index, item in enumerate(items):
            if index == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(bench_cli, "progress", interrupted_progress)
    out_json = tmp_path / "partial.json"
    code = cli(["bench", str(tiny_model_dir), "--stage", "text", *FAST, "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 130
    assert "interrupted: 1 of 2 configurations finished" in captured.out
    report = json.loads(out_json.read_text())
    assert report["interrupted"] is True and len(report["results"]) == 1


def test_precision_int8_on_an_onnx_dir_with_the_gemm_limit(tiny_model_dir, tmp_path, capsys):
    import pytest

    pytest.importorskip("onnxruntime", reason="int8 graphs run on onnxruntime (pip install 'clippy-rt[onnx]')")
    from clippy_rt.export.onnx import export_onnx

    onnx_dir = tmp_path / "tiny-onnx"
    export_onnx(tiny_model_dir, onnx_dir, int8=True, seg_head=False, check_sizes=[32], check_batches=[1])
    out_json = tmp_path / "bench.json"
    code = cli(["bench", str(onnx_dir), "--backend", "onnxruntime", "--precision", "fp32,int8",
                "--stage", "image,gemm", "--size", "32", *FAST, "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = {(r["stage"], r["precision"]): r for r in json.loads(out_json.read_text())["results"]}
    assert set(rows) == {("image", "fp32"), ("image", "int8"), ("gemm", "fp32"), ("gemm", "int8")}
    assert all(r["status"] == "ok" for r in rows.values())
    for precision in ("fp32", "int8"):
        image, probe = rows[("image", precision)], rows[("gemm", precision)]
        assert image["fraction_of_gemm_limit"] == pytest.approx(image["gflops"] / probe["gflops"], rel=1e-4)
    assert "GEMM limit" in captured.out
