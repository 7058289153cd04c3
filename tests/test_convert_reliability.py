"""Conversion refuses what would load as garbage: ints where tensors belong, integer or
boolean weight tensors, NaN weights, and zero heads."""

from __future__ import annotations

import pytest
import torch

from clippy_rt.cli.main import main as cli

from test_convert import _reference_checkpoint, references  # noqa: F401  (fixture)

pytest.importorskip("timm")
pytest.importorskip("transformers")

KEY = "module.visual.trunk.blocks.0.mlp.fc1.weight"


def _convert(tmp_path, tiny_model_dir, ckpt, *extra):
    return cli(["convert", "--checkpoint", str(ckpt), "--tokenizer", str(tiny_model_dir / "spiece.model"),
                "--out", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize("damage,expected", [
    ("int", "'blocks.0.mlp.fc1.weight' is a int, expected a tensor"),
    ("int64", "is a int64 tensor; weights must be floating point"),
    ("bool", "is a bool tensor; weights must be floating point"),
    ("nan", "holds NaN or infinite values"),
    ("inf-logit-scale", "'logit_scale' holds NaN or infinite values"),
])
def test_bad_values_are_refused_in_one_line(tmp_path, references, tiny_model_dir, damage, expected, capsys):  # noqa: F811
    vit, t5, dense = references
    ckpt = tmp_path / "ckpt.pt"
    state = _reference_checkpoint(ckpt, vit, t5, dense)
    if damage == "int":
        state[KEY] = 7
    elif damage == "int64":
        state[KEY] = state[KEY].to(torch.int64)
    elif damage == "bool":
        state[KEY] = state[KEY] > 0
    elif damage == "nan":
        state[KEY] = state[KEY].clone()
        state[KEY][0, 0] = float("nan")
    else:
        state["module.logit_scale"] = torch.tensor(float("inf"))
    torch.save({"state_dict": state}, ckpt)
    assert _convert(tmp_path, tiny_model_dir, ckpt, "--vit-heads", "2") == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_zero_heads_are_refused(tmp_path, references, tiny_model_dir, capsys):  # noqa: F811
    from clippy_rt.config import tiny
    from clippy_rt.convert import infer_image_config
    from clippy_rt.errors import CheckpointError

    vit, t5, dense = references
    ckpt = tmp_path / "ckpt.pt"
    _reference_checkpoint(ckpt, vit, t5, dense)
    with pytest.raises(SystemExit) as exit_info:
        _convert(tmp_path, tiny_model_dir, ckpt, "--vit-heads", "0")
    assert exit_info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    weights = {k[len("visual."):]: v for k, v in __import__("clippy_rt").load(tiny_model_dir).model.state_dict().items()
               if k.startswith("visual.")}
    with pytest.raises(CheckpointError, match="positive integer"):
        infer_image_config(weights, tiny().image, heads=0)
