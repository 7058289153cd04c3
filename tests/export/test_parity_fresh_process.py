"""The exporter's parity table, re-measured in a fresh process from the files it wrote.

The child process opens the written graphs with plain ``onnxruntime.InferenceSession``
(no clippy-rt runner), runs torch float32 on the model directory's weights, and feeds both
the inputs the parity check documents (torch.randn from seed 0, per size then batch). Its
errors must be the ones the manifest records, and the float16 rows must show float16
rounding (a table comparing ONNX Runtime with itself would read 0)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CHILD = textwrap.dedent("""
    import json, sys
    import onnxruntime as ort
    import torch
    from clippy_rt.tokenizer import load_tokenizer
    from clippy_rt.export.onnx import parity_prompts
    from clippy_rt.formats.model_dir import load_model

    onnx_dir, model_dir = sys.argv[1], sys.argv[2]
    manifest = json.load(open(onnx_dir + "/manifest.json"))
    files = {(e["graph"], e["precision"]): onnx_dir + "/" + n for n, e in manifest["files"].items()
             if "graph" in e}
    model, info = load_model(model_dir)
    ids, mask = load_tokenizer(info.tokenizer, info.config).encode(parity_prompts(info.config))
    with torch.no_grad():
        text_ref = model.text(ids, mask)
    sessions = {key: ort.InferenceSession(path, providers=["CPUExecutionProvider"]) for key, path in files.items()}
    sizes = []
    for row in manifest["parity"]:
        if tuple(row["size"]) not in sizes:
            sizes.append(tuple(row["size"]))
    batches = sorted({row["batch"] for row in manifest["parity"]})
    generator = torch.Generator().manual_seed(0)
    rows = []
    for height, width in sizes:
        for batch in batches:
            pixels = torch.randn(batch, 3, height, width, generator=generator)
            with torch.no_grad():
                patch_ref, pooled_ref = model.visual(pixels)
            for precision in manifest["precisions"]:
                patch, pooled = sessions[("image", precision)].run(None, {"pixel_values": pixels.numpy()})
                text = sessions[("text", precision)].run(None, {"input_ids": ids.numpy(),
                                                                "attention_mask": mask.numpy()})[0]
                rows.append({"precision": precision, "size": [height, width], "batch": batch, "max_abs": {
                    "patch_features": float((torch.from_numpy(patch) - patch_ref).abs().max()),
                    "image_embeds": float((torch.from_numpy(pooled) - pooled_ref).abs().max()),
                    "text_embeds": float((torch.from_numpy(text) - text_ref).abs().max())}})
    print(json.dumps(rows))
""")


def test_parity_table_matches_a_fresh_measurement(tiny_onnx_dir, tiny_model_dir):
    done = subprocess.run([sys.executable, "-c", CHILD, str(tiny_onnx_dir), str(tiny_model_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = {(r["precision"], tuple(r["size"]), r["batch"]): r["max_abs"] for r in json.loads(done.stdout)}
    reported = {(r["precision"], tuple(r["size"]), r["batch"]): r["max_abs"]
                for r in json.loads((tiny_onnx_dir / "manifest.json").read_text())["parity"]}
    assert set(reported) == set(measured) and len(reported) == 2 * 2 * 2
    for key, errors in measured.items():
        for output, value in errors.items():
            # Thread counts may differ between the processes: allow rounding-level drift.
            assert reported[key][output] == pytest.approx(value, rel=0.25, abs=2e-7), (key, output)
        if key[0] == "fp16":
            assert min(errors.values()) > 1e-6, key  # float16 rounding is visible in every output
