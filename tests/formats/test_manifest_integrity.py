"""Every file an ONNX directory's manifest lists (each graph of each precision, the seg head,
the tokenizer, the config), corrupted without changing its size, is refused on load: the
list is read from the manifest the exporter wrote, not written out here."""

from __future__ import annotations

import json
import shutil

import pytest

from clippy_rt.errors import ClippyError
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
