"""Measure the reduced-precision errors that tests/tolerances.py is sized from.

Runs the comparisons the tests make, on the tiny random model (seed 0, as the test
fixture), and prints the largest absolute error per dtype against torch float32:

- float16: the ONNX float16 graphs (ONNX Runtime, CPU) on the image shapes of
  tests/backends/test_onnxruntime.py and on the text prompts, and the torch float16 engine;
- bfloat16: the torch bfloat16 engine.

All outputs compared are L2-normalised embeddings (|value| <= 1), so absolute error is
the figure that matters. Usage: python tools/measure_tolerances.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import clippy_rt
from clippy_rt.formats.random_init import random_init

SHAPES = [(1, 32, 32), (3, 32, 32), (1, 48, 64), (3, 48, 64), (2, 32, 48)]
PROMPTS = ["cat", "a dog on grass", "sky", "a red car on a road", "the sky above the hills",
           " ".join(["word"] * 40)]


def _errors(engine, reference):
    worst = 0.0
    for batch, height, width in SHAPES:
        for seed in range(3):
            pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
            got, expected = engine.encode_image(pixels), reference.encode_image(pixels)
            worst = max(worst, float((got.patch - expected.patch).abs().max()),
                        float((got.pooled - expected.pooled).abs().max()))
    worst = max(worst, float((engine.encode_text(PROMPTS) - reference.encode_text(PROMPTS)).abs().max()))
    return worst


def main() -> None:
    from clippy_rt.export.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        random_init("tiny", model_dir, seed=0)
        reference = clippy_rt.load(model_dir)
        figures = {
            "torch float16": _errors(clippy_rt.load(model_dir, precision="fp16"), reference),
            "torch bfloat16": _errors(clippy_rt.load(model_dir, precision="bf16"), reference),
        }
        onnx_dir = Path(tmp) / "onnx"
        export_onnx(model_dir, onnx_dir, fp16=True, check_sizes=[32], check_batches=[1], seg_head=False)
        figures["onnxruntime float16"] = _errors(
            clippy_rt.load(onnx_dir, backend="onnxruntime", precision="fp16"), reference)
        figures["onnxruntime float32"] = _errors(clippy_rt.load(onnx_dir, backend="onnxruntime"), reference)
    for name, value in figures.items():
        print(f"{name:22s} max abs error {value:.3e}")


if __name__ == "__main__":
    main()
