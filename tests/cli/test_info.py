"""info on each kind of directory: architecture, precisions, parity, hashes, prompt template
and a shipped vocabulary, against what the files themselves say."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clippy_rt.cli.main import main as cli
from clippy_rt.config import tiny


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_onnx_directory(tiny_onnx_dir, capsys):
    assert cli(["info", str(tiny_onnx_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"onnx directory {tiny_onnx_dir}"
    assert "image tower: ViT patch 8, width 32, depth 2, heads 2, pooling max (class token in), input 32" in lines
    assert any(line.startswith("precisions: fp32, fp16") for line in lines)
    # parity rows at the sizes and batches the export checked (32 and 32x48, batches 1 and 2)
    for size in ("32x32", "32x48"):
        for batch in (1, 2):
            assert any(line.startswith(f"parity fp16 {size} batch {batch}: max |diff| ") for line in lines), lines
    for graph in tiny_onnx_dir.glob("*.onnx"):
        assert f"  {graph.name}  {graph.stat().st_size:,} bytes  sha256 {_sha256(graph)}" in lines
    assert ("prompt template: 'a photo of {article} {}'  (segment and classify fill prompts into it; "
            "--no-template: verbatim)") in lines


def test_engine_directory(tmp_path, capsys):
    engines = tmp_path / "engines"
    engines.mkdir()
    plans = {}
    for graph in ("image", "text"):
        (engines / f"{graph}.plan").write_bytes(graph.encode() * 100)
        plans[graph] = {"file": f"{graph}.plan", "bytes": 500, "sha256": _sha256(engines / f"{graph}.plan")}
    sidecar = {"format": "clippy-rt-tensorrt", "format_version": 1, "tensorrt_version": "10.3.0",
               "gpu_name": "Orin", "compute_capability": [8, 7], "precision": "fp16", "config": tiny().to_dict(),
               "logit_scale": 1.0, "tokenizer": "spiece.model", "plans": plans}
    (engines / "engine.json").write_text(json.dumps(sidecar))
    assert cli(["info", str(engines)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"tensorrt directory {engines}"
    assert "built with TensorRT 10.3.0 for Orin (compute capability 8.7); precision fp16" in lines
    assert "text tower: T5 d_model 32, depth 2, heads 4, ffn relu, vocab 512, max length 32, projection yes" in lines
    for graph in ("image", "text"):
        plan = engines / f"{graph}.plan"
        assert f"  {plan.name}  {plan.stat().st_size:,} bytes  sha256 {hashlib.sha256(plan.read_bytes()).hexdigest()}" \
            in lines


def test_shipped_vocabulary_is_shown_and_its_prompts_argument_works(tmp_path, tiny_model_dir, capsys):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    vocabulary = {"background": ["a grassy background", "a noisy background"], "circle": ["a circle"],
                  "square": ["square", "a square"]}
    (model / "vocabulary.json").write_text(json.dumps(vocabulary))
    assert cli(["info", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vocabulary"] == vocabulary and report["prompt_template"] == "a photo of {article} {}"
    assert cli(["info", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "vocabulary (vocabulary.json, 3 classes):" in lines
    assert "  background: a grassy background | a noisy background" in lines
    (argument,) = [json.loads(line.split(": ", 1)[1]) for line in lines if line.startswith("  as --prompts: ")]
    # The printed argument gives segment the same classes.
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert cli(["segment", str(model), str(tmp_path / "in.png"), "--prompts", argument, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["background", "circle", "square"]
    # ... and exactly the vocabulary's prompts, no others.
    from clippy_rt.prompts import build_prompt_set, parse_cli_prompts

    assert parse_cli_prompts(argument) == build_prompt_set(vocabulary)


@pytest.mark.parametrize("content, message", [
    ('["circle"]', "JSON object"),
    ('{"a": ["x"], "b": ["x"]}', "prompt 'x' is in classes"),
    ("{", "not a vocabulary"),
])
def test_a_bad_vocabulary_is_one_line(tmp_path, tiny_model_dir, capsys, content, message):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / "vocabulary.json").write_text(content)
    assert cli(["info", str(model)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and "vocabulary.json" in error


def test_export_carries_the_vocabulary_into_the_onnx_directory(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("onnxruntime")
    from clippy_rt.export.onnx import export_onnx

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    vocabulary = {"background": ["a grassy background"], "circle": ["a circle"]}
    (model / "vocabulary.json").write_text(json.dumps(vocabulary))
    out = tmp_path / "onnx"
    export_onnx(model, out, check_sizes=[32], check_batches=[1], seg_head=False)
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "vocabulary.json").read_bytes()
    assert manifest["files"]["vocabulary.json"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert cli(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vocabulary"] == vocabulary
