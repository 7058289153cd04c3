"""Every file an ONNX directory's manifest lists (each graph of each precision, the seg head,
the tokenizer, the config), corrupted without changing its size, is refused on load: the
list is read from the manifest the exporter wrote, not written out here."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from clippy_rt.config import ClippyConfig
from clippy_rt.errors import ClippyError, ModelDirError
from clippy_rt.formats.onnx_dir import MANIFEST_FILE, read_onnx_dir

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """The tiny model with every precision the ONNX Runtime exporter writes (fp32, fp16,
    int8) and the seg head."""
    from clippy_rt.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("integrity") / "tiny-onnx"
    export_onnx(tiny_model_dir, out, fp16=True, int8=True, check_sizes=[32], check_batches=[1])
    return out


def _listed(folder):
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    return manifest, sorted(set(manifest["files"]) | {manifest["tokenizer"], "config.json"})


def _flip_one_byte(path):
    """Change one byte in the middle of ``path``; its size stays the same."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_manifest_lists_every_precision_and_file(exported):
    manifest, listed = _listed(exported)
    assert set(manifest["precisions"]) == {"fp32", "fp16", "int8"}
    assert {"image.onnx", "text.onnx", "image.fp16.onnx", "text.fp16.onnx", "seg_head.onnx"} <= set(listed)
    assert any("int8" in name for name in manifest["files"])
    # Nothing in the directory escapes the manifest (besides the manifest itself).
    assert sorted(p.name for p in exported.iterdir() if p.name != MANIFEST_FILE) == listed


def test_a_same_size_corruption_of_any_listed_file_is_refused(exported, tmp_path):
    read_onnx_dir(exported)  # the intact directory loads
    _, listed = _listed(exported)
    accepted = []
    for name in listed:
        copy = tmp_path / name
        shutil.copytree(exported, copy)
        size = (copy / name).stat().st_size
        _flip_one_byte(copy / name)
        assert (copy / name).stat().st_size == size
        try:
            read_onnx_dir(copy)
        except ClippyError:
            pass
        else:
            accepted.append(name)
        shutil.rmtree(copy)
    assert accepted == []


def test_the_runtime_refuses_a_corrupt_graph(exported, tmp_path):
    import clippy_rt

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    _flip_one_byte(copy / "image.int8.onnx" if (copy / "image.int8.onnx").exists() else copy / "image.onnx")
    with pytest.raises(ClippyError, match="sha256"):
        clippy_rt.load(copy, backend="onnxruntime")


def test_the_loaded_directory_holds_what_the_manifest_says(tiny_onnx_dir):
    manifest = json.loads((tiny_onnx_dir / MANIFEST_FILE).read_text())
    loaded = read_onnx_dir(tiny_onnx_dir)
    assert loaded.path == tiny_onnx_dir and loaded.manifest == manifest
    assert loaded.config == ClippyConfig.load(tiny_onnx_dir / "config.json")
    assert loaded.tokenizer == tiny_onnx_dir / "spiece.model"
    assert loaded.logit_scale == manifest["logit_scale"]
    assert loaded.precisions == ("fp32", "fp16")
    assert loaded.graph_path("image", "fp16") == tiny_onnx_dir / "image.fp16.onnx"
    assert loaded.graph_path("text") == tiny_onnx_dir / "text.onnx"
    assert loaded.openvino_int8_path("image") is None


def test_what_is_not_an_onnx_directory_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(ModelDirError, match="^" + re.escape(f"ONNX directory not found: {tmp_path / 'nowhere'}") + "$"):
        read_onnx_dir(tmp_path / "nowhere")
    message = f"{tiny_model_dir} has no manifest.json: not an ONNX directory (it is a model directory: " \
              "export it first with `clippy-rt export`)"
    with pytest.raises(ModelDirError, match="^" + re.escape(message) + "$"):
        read_onnx_dir(tiny_model_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="^" + re.escape(f"{tmp_path / 'empty'} has no manifest.json: not an "
                                                             "ONNX directory") + "$"):
        read_onnx_dir(tmp_path / "empty")


def _edit_config(folder):
    config = json.loads((folder / "config.json").read_text())
    config["image"]["norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))


def _manifest_edit(change):
    def edit(folder):
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        change(manifest)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return edit


# (how the directory is spoilt, the whole message with {manifest} and {folder} filled in)
REFUSALS = {
    "other format": (_manifest_edit(lambda m: m.update(format="clippy-rt-model")),
                     "{manifest} is not a clippy-rt ONNX manifest (format 'clippy-rt-model')"),
    "not an object": (lambda folder: (folder / MANIFEST_FILE).write_text("[]"),
                      "{manifest} is not a clippy-rt ONNX manifest (format None)"),
    "newer version": (_manifest_edit(lambda m: m.update(format_version=2)),
                      "{manifest} has format_version 2; this clippy-rt reads version 1: re-export the model"),
    "no logit scale": (_manifest_edit(lambda m: m.pop("logit_scale")), "{manifest} lacks the 'logit_scale' entry"),
    "config not an object": (_manifest_edit(lambda m: m.update(config="tiny")),
                             "{manifest}: invalid config: config must be a JSON object, got str"),
    "no config.json": (lambda folder: (folder / "config.json").unlink(), "{folder} has no config.json"),
    "config.json edited": (_edit_config, "{folder}/config.json does not match the config in manifest.json: the "
                                         "directory was edited after export; re-export it"),
    "no tokenizer": (lambda folder: (folder / "spiece.model").unlink(),
                     "{folder} has no tokenizer file 'spiece.model' (listed in manifest.json)"),
    "tokenizer outside": (_manifest_edit(lambda m: m.update(tokenizer="../spiece.model")),
                          "{manifest} lists '../spiece.model': file names must be plain names of files in the "
                          "directory"),
    "file entry not a mapping": (_manifest_edit(lambda m: m["files"].update({"image.onnx": 139870})),
                                 "{manifest}: 'files' must map file names to {{bytes, sha256}} entries"),
    "graphs a list": (_manifest_edit(lambda m: m.update(graphs=[])),
                      "{manifest}: malformed 'graphs' or 'precisions' entry"),
    "unknown precision": (_manifest_edit(lambda m: m["precisions"].append("fp8")),
                          "{manifest}: unknown precision 'fp8'"),
    "precision without its graph": (_manifest_edit(lambda m: m["files"].pop("text.fp16.onnx")),
                                    "{manifest} lists precision fp16 but no text.fp16.onnx"),
    "openvino entry not a mapping": (_manifest_edit(lambda m: m.update(openvino_int8=[])),
                                     "{manifest}: malformed 'openvino_int8' entry"),
    "listed name outside": (_manifest_edit(lambda m: m["files"].update({"../x": {"bytes": 1, "sha256": "0"}})),
                            "{manifest} lists '../x': file names must be plain names of files in the directory"),
    "listed file missing": (lambda folder: (folder / "image.fp16.onnx").unlink(),
                            "{folder}/image.fp16.onnx is missing (listed in manifest.json)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_file_and_the_mismatch(tiny_onnx_dir, tmp_path, case):
    spoil, message = REFUSALS[case]
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    spoil(copy)
    expected = message.format(manifest=copy / MANIFEST_FILE, folder=copy)
    with pytest.raises(ModelDirError, match="^" + re.escape(expected) + "$"):
        read_onnx_dir(copy)


def test_declared_tensors_must_be_the_io_spec(tiny_onnx_dir, tmp_path):
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["graphs"]["image"]["outputs"][1]["shape"] = ["batch", 64]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="^" + re.escape(f"{copy / MANIFEST_FILE}: the image graph's tensors ")
                       + r".*'shape': \['batch', 64\].* do not match this clippy-rt's I/O spec .*'shape': "
                         r"\['batch', 32\].*; re-export the model$"):
        read_onnx_dir(copy)


def test_a_file_of_another_size_gives_both_sizes(tiny_onnx_dir, tmp_path):
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    size = (copy / "text.onnx").stat().st_size
    (copy / "text.onnx").write_bytes((copy / "text.onnx").read_bytes()[:-10])
    message = f"{copy / 'text.onnx'} has {size - 10} bytes but manifest.json records {size}: the file is " \
              "truncated or was replaced; rebuild the directory"
    with pytest.raises(ModelDirError, match="^" + re.escape(message) + "$"):
        read_onnx_dir(copy)


def test_a_manifest_that_is_not_json_is_named(tiny_onnx_dir, tmp_path):
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    (copy / MANIFEST_FILE).write_text('{"format": "clippy-rt-onnx",')
    with pytest.raises(ModelDirError, match="^" + re.escape(f"{copy / MANIFEST_FILE} is not valid JSON: ") + r"\S"):
        read_onnx_dir(copy)
