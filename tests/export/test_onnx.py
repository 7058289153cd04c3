"""`clippy-rt export`: graphs, checks, the manifest, the parity table and the seg_head graph."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from clippy_rt.cli.main import main  # noqa: E402
from clippy_rt.config import ClippyConfig  # noqa: E402
from clippy_rt.errors import InputError, ModelDirError  # noqa: E402
from clippy_rt.formats import io_spec  # noqa: E402
from clippy_rt.export.onnx import MIN_OPSET, export_onnx  # noqa: E402
from clippy_rt.formats.model_dir import load_model  # noqa: E402

from tolerances import TOLERANCES  # noqa: E402

CHECK_SIZES = "32,48"  # the tiny model's trained size (4x4 grid) and a larger one


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """The tiny model exported once through the CLI, with float16 graphs: (dir, stdout)."""
    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["export", str(tiny_model_dir), "--out", str(out), "--fp16", "--check-sizes", CHECK_SIZES])
    assert code == 0
    return out, stdout.getvalue()


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_directory_is_self_contained(exported, tiny_model_dir):
    out, _ = exported
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "spiece.model", "manifest.json", "image.onnx", "text.onnx",
                     "image.fp16.onnx", "text.fp16.onnx", "seg_head.onnx"}
    assert (out / "config.json").read_text() == (tiny_model_dir / "config.json").read_text()
    assert (out / "spiece.model").read_bytes() == (tiny_model_dir / "spiece.model").read_bytes()


def test_manifest_records_sources_files_and_tensors(exported, tiny_model_dir):
    out, _ = exported
    manifest = _manifest(out)
    model, info = load_model(tiny_model_dir)
    assert manifest["format"] == "clippy-rt-onnx"
    assert manifest["opset"] >= MIN_OPSET
    assert manifest["precisions"] == ["fp32", "fp16"]
    assert ClippyConfig.from_dict(manifest["config"]) == info.config
    assert manifest["logit_scale"] == pytest.approx(float(model.logit_scale.detach()))
    weights = hashlib.sha256((tiny_model_dir / "weights.safetensors").read_bytes()).hexdigest()
    assert manifest["source"]["weights_sha256"] == weights
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    image = manifest["graphs"]["image"]
    assert [t["name"] for t in image["inputs"]] == ["pixel_values"]
    assert image["outputs"][1] == {"name": "image_embeds", "dtype": "float32", "shape": ["batch", 32]}
    assert [t["name"] for t in manifest["graphs"]["text"]["inputs"]] == ["input_ids", "attention_mask"]
    assert {"torch", "onnx", "onnxruntime", "clippy_rt", "python"} <= set(manifest["tools"])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("graph", [io_spec.IMAGE, io_spec.TEXT])
def test_graphs_check_and_keep_axes_dynamic(exported, graph, precision):
    out, _ = exported
    model = onnx.load(str(out / graph.filename(precision)))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
    for value, spec in zip(list(model.graph.input) + list(model.graph.output), graph.inputs + graph.outputs):
        assert value.name == spec.name
        assert value.type.tensor_type.elem_type == spec.onnx_type  # float32 I/O in both precisions
        dims = value.type.tensor_type.shape.dim
        for index, axis in spec.dynamic_axes.items():
            assert dims[index].dim_param, f"{spec.name} axis {index} ({axis}) was frozen to {dims[index].dim_value}"


def test_fp16_graphs_hold_float16_weights(exported):
    out, _ = exported
    image = onnx.load(str(out / "image.fp16.onnx"))
    big = [t for t in image.graph.initializer if t.data_type in (1, 10) and np.prod(t.dims) > 64]
    # All of the ViT's weights but the patch part of the position embedding (resized in float32).
    float32 = [t.name for t in big if t.data_type == 1]
    assert len(float32) == 1
    assert [n.op_type for n in image.graph.node if float32[0] in n.input] == ["Resize"]
    text = onnx.load(str(out / "text.fp16.onnx"))
    half = [t for t in text.graph.initializer if t.data_type == 10]
    assert len(half) == 5 * 2  # q, k, v, o, wi in each of the tiny model's 2 blocks (tests/export/test_fp16.py)


def test_parity_table_printed_and_within_tolerance(exported):
    out, stdout = exported
    rows = _manifest(out)["parity"]
    assert "| precision | size (HxW) | batch |" in stdout
    assert {(tuple(r["size"]), r["batch"], r["precision"]) for r in rows} == {
        ((s, s), b, p) for s in (32, 48) for b in (1, 2) for p in ("fp32", "fp16")}
    for row in rows:
        limit = TOLERANCES[torch.float32 if row["precision"] == "fp32" else torch.float16]["atol"]
        assert max(row["max_abs"].values()) <= limit, row
        assert row["label_agreement"] >= 99.0, row


def test_no_noop_casts_left(exported):
    # ONNX Runtime's cast elimination breaks on float->float casts (see drop_noop_casts).
    out, _ = exported
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "text.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        # A cast that produces a graph output carries the output's name and stays.
        if node.op_type == "Cast" and node.output[0] not in outputs:
            target = next(a.i for a in node.attribute if a.name == "to")
            assert types.get(node.input[0]) != target, node.name


def test_seg_head_graph_matches_the_torch_head(exported):
    from clippy_rt.kernels.seg_head_ref import seg_head_ref

    out, _ = exported
    session = ort.InferenceSession(str(out / "seg_head.onnx"), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(3)
    for batch, h, w, k, size in ((2, 4, 6, 5, (32, 48)), (1, 3, 3, 2, (7, 11))):
        patch = torch.nn.functional.normalize(torch.randn(batch, h, w, 32, generator=generator), dim=-1)
        text = torch.nn.functional.normalize(torch.randn(k, 32, generator=generator), dim=-1)
        labels_ref, scores_ref = seg_head_ref(patch, text, size, return_scores=True)
        labels, scores = session.run(None, {"patch_features": patch.reshape(batch, h * w, 32).numpy(),
                                            "text_embeds": text.numpy(), "grid_size": np.array([h, w]),
                                            "output_size": np.array(size)})
        assert torch.equal(torch.from_numpy(labels), labels_ref)
        torch.testing.assert_close(torch.from_numpy(scores), scores_ref, **TOLERANCES[torch.float32])


def test_bad_arguments_are_rejected(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="opset"):
        export_onnx(tiny_model_dir, tmp_path / "a", opset=MIN_OPSET - 1)
    with pytest.raises(InputError, match="multiples of the patch size"):
        export_onnx(tiny_model_dir, tmp_path / "b", check_sizes=[30])
    with pytest.raises(ModelDirError, match="not found"):
        export_onnx(tmp_path / "missing", tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_existing_output_is_left_alone(exported, tiny_model_dir):
    out, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(["export", str(tiny_model_dir), "--out", str(out)])
    assert code == 1
    assert "not empty" in stderr.getvalue() and len(stderr.getvalue().strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not list(out.parent.glob(".*partial"))
