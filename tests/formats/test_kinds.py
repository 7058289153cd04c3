"""artifact_kind: which directory a path is, decided by its marker files; the atomic writes."""

from __future__ import annotations

import pytest

from clippy_rt.errors import ModelDirError
from clippy_rt.formats.atomic import atomic_directory, atomic_write_bytes
from clippy_rt.formats.kinds import artifact_config, artifact_kind, find_artifact_kind


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("{}")
    return folder


def test_kind_from_marker_files(tmp_path):
    assert artifact_kind(_touch(tmp_path / "m", "weights.safetensors", "config.json")) == "model"
    assert artifact_kind(_touch(tmp_path / "o", "manifest.json", "image.onnx")) == "onnx"
    assert artifact_kind(_touch(tmp_path / "e", "engine.json", "image.plan")) == "engine"
    # An engine directory built from an ONNX directory may keep its manifest: engine wins;
    # weights make a model directory whatever else is there.
    assert artifact_kind(_touch(tmp_path / "oe", "manifest.json", "engine.json")) == "engine"
    assert artifact_kind(_touch(tmp_path / "all", "manifest.json", "engine.json", "weights.safetensors")) == "model"


def test_unknown_paths_are_one_line_errors(tmp_path):
    assert find_artifact_kind(tmp_path / "nowhere") is None
    with pytest.raises(ModelDirError, match="no such model, ONNX or engine directory"):
        artifact_kind(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelDirError, match="is not a directory"):
        artifact_kind(tmp_path / "file.txt")
    with pytest.raises(ModelDirError, match=r"no weights\.safetensors, manifest\.json or engine\.json"):
        artifact_kind(_touch(tmp_path / "empty"))


def test_config_read_from_the_sidecar_without_config_json(tiny_model_dir, tmp_path):
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    engine_dir = _touch(tmp_path / "e")
    (engine_dir / "engine.json").write_text(json.dumps({"config": config}))
    assert artifact_config(engine_dir, "engine").arch == "tiny"
    (engine_dir / "engine.json").write_text("[]")
    with pytest.raises(ModelDirError, match="holds no model config"):
        artifact_config(engine_dir, "engine")


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "cache.bin"
    assert atomic_write_bytes(target, b"abc").read_bytes() == b"abc"
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as partial:
            (partial / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["cache.bin"]
    _touch(tmp_path / "full", "a")
    with pytest.raises(ModelDirError, match="not empty"):
        with atomic_directory(tmp_path / "full"):
            pass
