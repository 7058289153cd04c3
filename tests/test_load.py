"""``clippy_rt.load``: the backend follows the directory's kind unless named; ``threads``."""

from __future__ import annotations

import pytest
import torch

import clippy_rt
from clippy_rt.cli.main import main as cli
from clippy_rt.errors import InputError


@pytest.fixture()
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_backend_follows_the_directory_kind(tiny_model_dir, tiny_onnx_dir):
    assert clippy_rt.load(tiny_model_dir).backend == "torch"
    assert clippy_rt.load(tiny_onnx_dir).backend == "onnxruntime"
    assert clippy_rt.load("demo").backend == "torch"


def test_threads_reach_torch_and_onnx_runtime(tiny_model_dir, tiny_onnx_dir, torch_threads):
    torch.set_num_threads(2)
    clippy_rt.load(tiny_model_dir, threads=1)
    assert torch.get_num_threads() == 1
    engine = clippy_rt.load(tiny_onnx_dir, threads=1)
    for runner in (engine.image_runner, engine.text_runner):
        assert runner.session.get_session_options().intra_op_num_threads == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InputError, match="threads must be a positive integer"):
            clippy_rt.load(tiny_model_dir, threads=bad)


def test_cli_threads_option(tiny_model_dir, tmp_path, torch_threads, capsys):
    from PIL import Image

    image = tmp_path / "frame.png"
    Image.new("RGB", (40, 32), (120, 30, 200)).save(image)
    torch.set_num_threads(2)
    assert cli(["segment", str(tiny_model_dir), str(image), "--prompts", "a,b", "--threads", "1",
                "--out", str(tmp_path / "out")]) == 0
    assert torch.get_num_threads() == 1
    with pytest.raises(SystemExit) as exit_info:
        cli(["classify", str(tiny_model_dir), str(image), "--labels", "a,b", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads: expected a positive integer" in capsys.readouterr().err
