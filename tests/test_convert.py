"""Checkpoint conversion from both layouts, checked against timm and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clippy_rt
from clippy_rt.cli.main import main as cli
from clippy_rt.config import tiny
from clippy_rt.errors import CheckpointError

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def references():
    torch.manual_seed(0)
    cfg = tiny()
    image, text = cfg.image, cfg.text
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=image.pos_grid * image.patch_size, patch_size=image.patch_size, embed_dim=image.width,
        depth=image.depth, num_heads=image.heads, mlp_ratio=image.mlp_dim / image.width, qkv_bias=True,
        num_classes=0).eval()
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=text.vocab_size, d_model=text.d_model, d_kv=text.d_kv, d_ff=text.d_ff,
        num_layers=text.depth, num_heads=text.heads, relative_attention_num_buckets=text.relative_buckets,
        relative_attention_max_distance=text.relative_max_distance, feed_forward_proj="gated-gelu",
        dropout_rate=0.0)).eval()
    dense = torch.randn(text.projection_dim, text.d_model) * 0.2
    return vit, t5, dense


def _reference_checkpoint(path: Path, vit, t5, dense, logit_scale=3.0):
    state = {f"module.visual.trunk.{k}": v for k, v in vit.state_dict().items()}
    state.update({f"module.text.0.auto_model.{k}": v for k, v in t5.state_dict().items()})
    state["module.text.2.linear.weight"] = dense
    state["module.logit_scale"] = torch.tensor(logit_scale)
    torch.save({"state_dict": state, "epoch": 5}, path)
    return state


def _check_against_references(engine, vit, t5, dense):
    torch.manual_seed(5)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(pixels)
    features = engine.encode_image(pixels)
    torch.testing.assert_close(features.patch.reshape(2, -1, tokens.shape[-1]),
                               F.normalize(tokens[:, 1:], dim=-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.pooled, F.normalize(tokens.max(1).values, dim=-1), atol=1e-4, rtol=0)
    prompts = ["a red circle", "two shapes on grass and a long tail of words"]
    ids, mask = engine.tokenizer.encode(prompts)
    with torch.no_grad():
        hidden = t5(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(engine.encode_text(prompts), F.normalize(pooled @ dense.T, dim=-1),
                               atol=1e-4, rtol=0)


def test_reference_checkpoint_with_ddp_prefix(tmp_path, references, tiny_model_dir):
    vit, t5, dense = references
    ckpt = tmp_path / "epoch_5.pt"
    _reference_checkpoint(ckpt, vit, t5, dense)
    out = tmp_path / "converted"
    assert cli(["convert", "--checkpoint", str(ckpt), "--tokenizer", str(tiny_model_dir / "spiece.model"),
                "--out", str(out), "--vit-heads", "2", "--relative-max-distance", "16"]) == 0
    engine = clippy_rt.load(out)
    cfg = engine.config
    assert (cfg.image.depth, cfg.image.width, cfg.image.patch_size, cfg.image.pos_grid) == (2, 32, 8, 4)
    assert (cfg.text.ffn, cfg.text.heads, cfg.text.depth, cfg.text.d_ff) == ("gated-gelu", 4, 2, 64)
    assert engine.logit_scale == pytest.approx(3.0)
    assert not cfg.random_weights
    _check_against_references(engine, vit, t5, dense)


def test_timm_plus_sentence_transformers_directory(tmp_path, references, tiny_model_dir):
    from safetensors.torch import save_file

    vit, t5, dense = references
    vit_file = tmp_path / "dino_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(vit_file))
    st_dir = tmp_path / "sentence-t5"
    t5.save_pretrained(st_dir)
    (st_dir / "2_Dense").mkdir()
    save_file({"linear.weight": dense.contiguous()}, str(st_dir / "2_Dense" / "model.safetensors"))
    (st_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24}))
    (st_dir / "spiece.model").write_bytes((tiny_model_dir / "spiece.model").read_bytes())
    out = tmp_path / "converted"
    assert cli(["convert", "--vit", str(vit_file), "--sentence-transformer", str(st_dir), "--out", str(out),
                "--vit-heads", "2"]) == 0
    engine = clippy_rt.load(out)
    assert engine.config.text.max_length == 24
    assert engine.config.text.relative_max_distance == 16  # read from config.json
    _check_against_references(engine, vit, t5, dense)


def _sentence_t5_dir(st_dir: Path, t5, dense, tiny_model_dir) -> Path:
    from safetensors.torch import save_file

    t5.save_pretrained(st_dir)
    if dense is not None:
        (st_dir / "2_Dense").mkdir()
        save_file({"linear.weight": dense.contiguous()}, str(st_dir / "2_Dense" / "model.safetensors"))
    (st_dir / "spiece.model").write_bytes((tiny_model_dir / "spiece.model").read_bytes())
    return st_dir


def _dino_training_checkpoint(vit, layout: str) -> dict:
    """What DINO's main_dino.py saves: student (DDP) and teacher, each a backbone and a head."""
    head = {"head.mlp.0.weight": torch.randn(16, 32), "head.last_layer.weight_g": torch.ones(64, 1)}
    teacher = {**{f"backbone.{k}": v for k, v in vit.state_dict().items()}, **head}
    student = {f"module.{k}": torch.zeros_like(v) for k, v in teacher.items()}  # not what is taken
    if layout == "entries":
        return {"student": student, "teacher": teacher, "optimizer": {}, "epoch": 3}
    return {**{f"teacher.{k}": v for k, v in teacher.items()}, **{f"student.{k}": v for k, v in student.items()}}


@pytest.mark.parametrize("layout", ["entries", "prefixes"])
def test_dino_training_checkpoint_takes_the_teacher_backbone(tmp_path, references, tiny_model_dir, layout,
                                                             capsys):
    vit, t5, dense = references
    torch.save(_dino_training_checkpoint(vit, layout), tmp_path / "checkpoint.pth")
    st_dir = _sentence_t5_dir(tmp_path / "sentence-t5", t5, dense, tiny_model_dir)
    out = tmp_path / "converted"
    assert cli(["convert", "--vit", str(tmp_path / "checkpoint.pth"), "--sentence-transformer", str(st_dir),
                "--out", str(out), "--vit-heads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "teacher" in printed and "projection head, 2 tensors, left out" in printed
    assert "projection: 32 -> " in printed and "never trained together" in printed
    _check_against_references(clippy_rt.load(out), vit, t5, dense)


def test_sentence_transformer_without_dense_is_reported(tmp_path, references, tiny_model_dir, capsys):
    from safetensors.torch import save_file

    vit, t5, _ = references
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    st_dir = _sentence_t5_dir(tmp_path / "st", t5, None, tiny_model_dir)
    code = cli(["convert", "--vit", str(tmp_path / "vit.safetensors"), "--sentence-transformer", str(st_dir),
                "--out", str(tmp_path / "out"), "--vit-heads", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"projection: none ({st_dir} has no 2_Dense)" in printed
    assert not clippy_rt.load(tmp_path / "out").config.text.projection


def test_dino_checkpoint_as_reference_checkpoint_gets_a_hint(tmp_path, references, tiny_model_dir, capsys):
    vit, _, _ = references
    torch.save(_dino_training_checkpoint(vit, "prefixes"), tmp_path / "checkpoint.pth")
    assert cli(["convert", "--checkpoint", str(tmp_path / "checkpoint.pth"), "--tokenizer",
                str(tiny_model_dir / "spiece.model"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and len(error.replace(str(tmp_path), "")) < 250, error
    assert "is a DINO training checkpoint" in error and "give it with --vit" in error
    assert "'student.module.' (32 keys)" in error


@pytest.mark.parametrize("damage,expected", [
    ("missing", "missing keys: text.blocks.1.ffn.wo.weight"),
    ("extra", "unexpected keys"),
    ("misshaped", "mis-shaped keys: visual.blocks."),
])
def test_bad_checkpoints_are_refused_and_nothing_is_written(tmp_path, references, tiny_model_dir, damage,
                                                            expected, capsys):
    vit, t5, dense = references
    ckpt = tmp_path / "ckpt.pt"
    state = _reference_checkpoint(ckpt, vit, t5, dense)
    if damage == "missing":
        del state["module.text.0.auto_model.encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    elif damage == "extra":
        state["module.text.5.something.weight"] = torch.zeros(3)
    else:
        state["module.visual.trunk.blocks.0.mlp.fc1.weight"] = torch.zeros(7, 32)
    torch.save({"state_dict": state}, ckpt)
    out = tmp_path / "out"
    code = cli(["convert", "--checkpoint", str(ckpt), "--tokenizer", str(tiny_model_dir / "spiece.model"),
                "--out", str(out), "--vit-heads", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    from clippy_rt.convert import load_torch_file
    with pytest.raises(CheckpointError, match="weights-only"):
        load_torch_file(path)


def test_truncated_checkpoint(tmp_path, references):
    vit, t5, dense = references
    ckpt = tmp_path / "ckpt.pt"
    _reference_checkpoint(ckpt, vit, t5, dense)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    from clippy_rt.convert import from_reference_checkpoint
    with pytest.raises(CheckpointError, match="cannot load"):
        from_reference_checkpoint(ckpt, tiny())


def test_a_vit_file_of_other_keys_is_summarised(tmp_path, references, tiny_model_dir, capsys):
    _, t5, dense = references
    keys = {f"encoder.layer.{i}.attention.{name}.weight": torch.zeros(2, 2)
            for i in range(12) for name in ("query", "key", "value")}
    torch.save(keys, tmp_path / "bert.pth")
    st_dir = _sentence_t5_dir(tmp_path / "st", t5, dense, tiny_model_dir)
    capsys.readouterr()  # the progress bars of save_pretrained
    assert cli(["convert", "--vit", str(tmp_path / "bert.pth"), "--sentence-transformer", str(st_dir),
                "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "36 keys a timm ViT does not have: 'encoder.layer.' (36 keys)" in error
    assert "DINO training checkpoint keeps the ViT under 'teacher'" in error
