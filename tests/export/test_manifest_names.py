"""An ONNX directory's manifest cannot make the loader read files outside the directory."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import clippy_rt  # noqa: E402
from clippy_rt.errors import ModelDirError  # noqa: E402


def _edit(copy, change):
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "..", "sub/spiece.model"])
def test_tokenizer_and_file_names_are_confined(tmp_path, tiny_onnx_dir, name):
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    _edit(copy, lambda m: m.update(tokenizer=name))
    with pytest.raises(ModelDirError, match="plain names"):
        clippy_rt.load(copy, backend="onnxruntime")

    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy2")
    _edit(copy, lambda m: m["files"].update({name: {"bytes": 1, "sha256": "0" * 64}}))
    with pytest.raises(ModelDirError, match="plain names"):
        clippy_rt.load(copy, backend="onnxruntime")


def test_symbolic_links_are_refused(tmp_path, tiny_onnx_dir):
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    outside = tmp_path / "elsewhere.model"
    shutil.move(copy / "spiece.model", outside)
    (copy / "spiece.model").symlink_to(outside)
    with pytest.raises(ModelDirError, match="symbolic link"):
        clippy_rt.load(copy, backend="onnxruntime")


@pytest.mark.parametrize("name", ["spiece.model", "config.json"])
def test_tokenizer_and_config_are_hashed(tmp_path, tiny_onnx_dir, name):
    manifest = json.loads((tiny_onnx_dir / "manifest.json").read_text())
    assert {"config.json", "spiece.model"} <= set(manifest["files"])
    copy = shutil.copytree(tiny_onnx_dir, tmp_path / "copy")
    data = bytearray((copy / name).read_bytes())
    if name == "spiece.model":
        data[len(data) // 2] ^= 0x01  # same size, other bytes
    else:
        data += b"\n"  # the same config, other bytes
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="does not match its sha256|truncated or was replaced"):
        clippy_rt.load(copy, backend="onnxruntime")
