"""One clippy-rt node per camera, each in the camera's namespace.

    ros2 launch examples/ros2/clippy_rt.launch.py
    ros2 launch examples/ros2/clippy_rt.launch.py params:=/path/to/params.yaml use_sim_time:=true

Edit CAMERAS for your robot: each entry runs ``python -m clippy_rt.robotics.node`` under
``/<name>`` reading ``<image topic>``, so its outputs are ``/<name>/clippy_rt/labels``,
``/<name>/clippy_rt/classes`` (and ``/overlay``) and its diagnostics are named
``/<name>/clippy_rt``. The parameters come from ``params`` (default: params.yaml beside
this file). ``use_sim_time:=true`` puts the nodes on the /clock of ``ros2 bag play
--clock``. ``python`` is the interpreter that has clippy-rt (default: the one running the
launch, which must see ROS 2's packages: a venv made with ``--system-site-packages``).
"""

import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

CAMERAS = {
    "front": "/front_camera/image_raw",
    "rear": "/rear_camera/image_raw",
}


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("params", default_value=str(Path(__file__).resolve().parent / "params.yaml"),
                              description="the nodes' parameters file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="follow /clock (bag playback with --clock)"),
        DeclareLaunchArgument("python", default_value=sys.executable,
                              description="the Python interpreter that has clippy-rt"),
    ]
    nodes = [
        ExecuteProcess(
            cmd=[LaunchConfiguration("python"), "-m", "clippy_rt.robotics.node", "--ros-args",
                 "-r", f"__ns:=/{name}", "-r", f"image:={topic}",
                 "--params-file", LaunchConfiguration("params"),
                 "-p", ["use_sim_time:=", LaunchConfiguration("use_sim_time")]],
            name=f"clippy_rt_{name}",
            output="screen",
        )
        for name, topic in CAMERAS.items()
    ]
    return LaunchDescription(arguments + nodes)
