"""The identity of an artifact on disk (``clippy_rt.formats.identity``), which keys the
on-disk text-embedding cache."""

import shutil

import clippy_rt.formats.identity as identity_module
from clippy_rt.formats.identity import artifact_identity
from clippy_rt.formats.kinds import ENGINE, MODEL, ONNX


def test_identity_follows_the_weights_and_memoises_the_digest(tiny_model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    memo = tmp_path / "memo"
    hashed = []
    real = identity_module.sha256_file
    monkeypatch.setattr(identity_module, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    original = artifact_identity(tiny_model_dir, MODEL, memo_dir=memo)
    assert artifact_identity(copy, MODEL, memo_dir=memo) == original
    hashed.clear()
    assert artifact_identity(copy, MODEL, memo_dir=memo) == original
    assert "weights.safetensors" not in hashed          # memoised: size, mtime, inode unchanged
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert artifact_identity(copy, MODEL, memo_dir=memo) != original


def test_identity_of_onnx_and_engine_dirs_reads_their_listed_hashes(tmp_path):
    import json

    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(b"tok")
    manifest = {"tokenizer": "spiece.model", "files": {"text.onnx": {"sha256": "a" * 64},
                                                       "image.onnx": {"sha256": "b" * 64}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    first = artifact_identity(folder, ONNX)
    manifest["files"]["text.onnx"]["sha256"] = "c" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert artifact_identity(folder, ONNX) != first
    (folder / "engine.json").write_text(json.dumps({"tokenizer": "spiece.model",
                                                    "plans": {"text": {"sha256": "c" * 64}}}))
    engine_id = artifact_identity(folder, ENGINE)
    (folder / "spiece.model").write_bytes(b"another tokenizer")
    assert artifact_identity(folder, ENGINE) != engine_id
