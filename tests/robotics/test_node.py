"""The ROS 2 node's rclpy-free parts: settings from parameters, the loop it builds, and a
clear error where ROS 2 is not installed (rclpy is not installable from the package index)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from clippy_rt.robotics import node
from clippy_rt.errors import InputError
from fake_messages import raw_image


def test_settings_from_parameters_use_defaults_for_empty_values():
    settings = node.NodeSettings.from_parameters(dict(node.PARAMETER_DEFAULTS, model="demo", prompts="a,b"))
    assert settings == node.NodeSettings(model="demo", prompts="a,b")
    assert settings.device is None and settings.size is None and settings.text_cache is True
    custom = node.NodeSettings.from_parameters(dict(node.PARAMETER_DEFAULTS, model="m", prompts="a", size=448,
                                                    device="cuda", overlay=True, text_cache=False))
    assert (custom.size, custom.device, custom.overlay, custom.text_cache) == (448, "cuda", True, False)


@pytest.mark.parametrize("values, match", [
    (dict(prompts="a"), "'model' is required"),
    (dict(model="m"), "'prompts' is required"),
    (dict(model="m", prompts="a", size=-3), "'size'"),
])
def test_missing_or_bad_parameters_are_one_line_errors(values, match):
    with pytest.raises(InputError, match=match):
        node.NodeSettings.from_parameters(dict(node.PARAMETER_DEFAULTS, **values))


def test_build_loop_caches_text_on_disk_and_publishes(tiny_model_dir, tmp_path):
    published = []
    settings = node.NodeSettings(model=str(tiny_model_dir), prompts="cat,dog", text_cache_dir=str(tmp_path),
                                 overlay=True)
    loop = node.build_loop(settings, published.append, log=print)
    assert len(list(tmp_path.glob("*.sqlite"))) == 1
    loop.submit(raw_image(np.zeros((24, 40, 3), np.uint8)))
    output = loop.step(timeout=0)
    assert json.loads(output.classes["data"])["classes"] == ["cat", "dog"] and output.overlay is not None
    assert published == [output]


def test_main_without_ros2_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rclpy", None)
    assert node.main([]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "source your ROS 2 installation" in lines[0]


def test_the_bag_tool_names_the_missing_extra(monkeypatch, capsys):
    from clippy_rt.cli.main import main

    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)
    assert main(["bag", "demo", "x.mcap", "--topic", "/t", "--prompts", "a", "--out", "y.mcap"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("clippy-rt bag: error: ") and "pip install 'clippy-rt[ros]'" in lines[0]
