"""The ROS 2 examples in examples/ros2: the parameters file gives the node every parameter
it declares, with values it accepts, and the launch file starts one node per camera in the
camera's namespace. The launch file runs under a strict stand-in of the `launch` package
(signatures of launch's Humble and Jazzy releases: keyword-only arguments, choices checked)
and each node it starts runs through tests/robotics/rclpy_double.py."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

import clippy_rt
from clippy_rt.robotics import node as ros_node
import rclpy_double
from rclpy_double import wait_for
from test_node_ros import _image, _labels

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ros2"
PARAMS = EXAMPLES / "params.yaml"
LAUNCH = EXAMPLES / "clippy_rt.launch.py"


def test_params_file_sets_every_declared_parameter_with_an_accepted_value():
    document = yaml.safe_load(PARAMS.read_text())
    (values,) = [entry["ros__parameters"] for entry in document.values()]
    specs = {spec.name: spec for spec in ros_node.parameter_specs()}
    assert set(values) == set(specs)
    for name, value in values.items():
        assert ros_node.check_parameter(specs[name], value) is None, name
    settings = ros_node.NodeSettings.from_parameters(values)
    assert settings.model == "demo"
    # The prompts name the shipped model's classes.
    from clippy_rt.datasets.synthetic import class_names
    assert settings.prompts.split(",")[1:] == class_names()[1:]


# --- a strict stand-in for the launch package ---------------------------------------------

class LaunchConfiguration:
    def __init__(self, variable_name, *, default=None):
        self.variable_name, self.default = variable_name, default

    def perform(self, context):
        if self.variable_name in context:
            return context[self.variable_name]
        if self.default is None:
            raise KeyError(f"launch configuration '{self.variable_name}' does not exist")
        return self.default


class DeclareLaunchArgument:
    def __init__(self, name, *, default_value=None, description=None, choices=None, condition=None):
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        if choices is not None and default_value is not None and default_value not in choices:
            raise ValueError(f"default_value {default_value!r} is not in choices {choices}")
        self.name, self.default_value, self.choices = name, default_value, choices


class ExecuteProcess:
    def __init__(self, *, cmd, prefix=None, name=None, cwd=None, env=None, additional_env=None, shell=False,
                 sigterm_timeout=None, sigkill_timeout=None, emulate_tty=False, output="log", output_format=None,
                 cached_output=False, log_cmd=False, on_exit=None, respawn=False, respawn_delay=None,
                 condition=None):
        if output not in ("log", "screen", "both", "own_log", "full") and not isinstance(output, dict):
            raise ValueError(f"unknown output {output!r}")
        self.cmd, self.name = list(cmd), name

    def argv(self, context):
        def text(part):
            if isinstance(part, str):
                return part
            if isinstance(part, LaunchConfiguration):
                return part.perform(context)
            if isinstance(part, (list, tuple)):
                return "".join(text(p) for p in part)
            raise TypeError(f"not a substitution: {part!r}")
        return [text(part) for part in self.cmd]


class LaunchDescription:
    def __init__(self, initial_entities=None, *, deprecated_reason=None):
        self.entities = list(initial_entities or [])


def _launch(monkeypatch, **given):
    modules = {"launch": dict(LaunchDescription=LaunchDescription),
               "launch.actions": dict(DeclareLaunchArgument=DeclareLaunchArgument, ExecuteProcess=ExecuteProcess),
               "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration)}
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("clippy_rt_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    unknown = set(given) - {d.name for d in declared}
    assert not unknown, f"not launch arguments: {unknown}"
    context = {d.name: d.default_value for d in declared} | given
    for d in declared:
        assert d.choices is None or context[d.name] in d.choices
    return module, [e for e in description.entities if isinstance(e, ExecuteProcess)], context


def test_launch_starts_one_node_per_camera_under_its_namespace(monkeypatch):
    module, processes, context = _launch(monkeypatch)
    assert len(processes) == len(module.CAMERAS) >= 2
    assert Path(context["params"]) == PARAMS and context["python"] == sys.executable
    for process, name in zip(processes, module.CAMERAS):
        argv = process.argv(context)
        assert argv[:3] == [sys.executable, "-m", "clippy_rt.robotics.node"]
        assert process.name == f"clippy_rt_{name}"


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_each_launched_node_reads_its_camera_and_publishes_in_its_namespace(monkeypatch, tiny_model_dir, distro):
    engine = clippy_rt.load(tiny_model_dir)
    monkeypatch.setattr(clippy_rt, "load", lambda *args, **kwargs: engine)
    module, processes, context = _launch(monkeypatch, use_sim_time="true")
    for process, (name, topic) in zip(processes, module.CAMERAS.items()):
        world = rclpy_double.install(monkeypatch, distro)
        frame, message = _image(seed=len(name))
        seen = {}

        def play(world, node):
            seen["fqn"] = node.get_fully_qualified_name()
            seen["subscribed"] = [s.topic for s in node.subscriptions]
            seen["sim_time"] = node.get_parameter("use_sim_time").value
            node.deliver(topic, message)
            wait_for(lambda: world.published(f"/{name}/clippy_rt/labels"))
            world.signal("SIGINT")       # what launch sends first on shutdown

        world.play = play
        # `python -m clippy_rt.robotics.node ARGS`: the module's path, then ARGS
        assert ros_node.main([ros_node.__file__, *process.argv(context)[3:]]) == 0
        assert seen == {"fqn": f"/{name}/clippy_rt", "subscribed": [topic], "sim_time": True}
        prompts = yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]["prompts"].split(",")
        (labels,) = world.published(f"/{name}/clippy_rt/labels")
        np.testing.assert_array_equal(_labels(labels), engine.segment(frame, prompts).labels.numpy())
