"""A ROS 2 node: camera images in, open-vocabulary labels out.

    python -m clippy_rt.robotics.node --ros-args -p model:=/path/to/model -p prompts:="floor,person,chair" \\
        -r image:=/camera/image_raw

Subscribes to ``image`` (``sensor_msgs/msg/Image``; with ``-p compressed:=true`` the
``CompressedImage`` topic ``image/compressed``) with sensor-data QoS, keeps only the
latest frame, and publishes, with the frame's header:

- ``~/labels`` (``/clippy_rt/labels``): mono8, pixel = class index;
- ``~/classes``: ``std_msgs/msg/String``, the class names as a JSON list (transient local,
  republished when the vocabulary changes);
- ``~/overlay`` with ``-p overlay:=true``: rgb8;
- ``/diagnostics``: ``diagnostic_msgs/msg/DiagnosticArray`` with the per-frame latency.

``prompts`` may be changed while the node runs (``ros2 param set /clippy_rt prompts
"a,b|c"``); a bad vocabulary is refused with its reason and the current one stays.
Parameters: model (required), prompts (required), backend (torch), device, precision,
template, size (0: the model's), resize (squash | letterbox), overlay (false),
compressed (false), text_cache (true), text_cache_dir (default ~/.cache/clippy-rt/text).

This module is a thin layer over ``clippy_rt.robotics`` (message conversion, the
latest-frame loop), which is what the test suite covers; rclpy itself is imported only
by ``main``.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

NODE_NAME = "clippy_rt"


@dataclass(frozen=True)
class NodeSettings:
    """The node's parameters, checked."""

    model: str
    prompts: str
    backend: str = "torch"
    device: Optional[str] = None
    precision: Optional[str] = None
    template: Optional[str] = None
    size: Optional[int] = None
    resize: str = "squash"
    overlay: bool = False
    compressed: bool = False
    text_cache: bool = True
    text_cache_dir: Optional[str] = None

    @classmethod
    def from_parameters(cls, values: Dict[str, Any]) -> "NodeSettings":
        """ROS parameter values (empty strings and 0 meaning "default") -> settings."""
        from ..errors import InputError

        def text(name: str) -> Optional[str]:
            value = values.get(name)
            return str(value) if value not in (None, "") else None

        if not text("model"):
            raise InputError("parameter 'model' is required (-p model:=/path/to/model or demo)")
        if not text("prompts"):
            raise InputError("parameter 'prompts' is required (-p prompts:=\"floor,person,chair\")")
        size = values.get("size") or None
        if size is not None and (not isinstance(size, int) or size < 0):
            raise InputError(f"parameter 'size' must be a non-negative integer, got {size!r}")
        return cls(model=text("model"), prompts=text("prompts"), backend=text("backend") or "torch",
                   device=text("device"), precision=text("precision"), template=text("template"), size=size,
                   resize=text("resize") or "squash", overlay=bool(values.get("overlay", False)),
                   compressed=bool(values.get("compressed", False)),
                   text_cache=bool(values.get("text_cache", True)), text_cache_dir=text("text_cache_dir"))


PARAMETER_DEFAULTS = {"model": "", "prompts": "", "backend": "torch", "device": "", "precision": "",
                      "template": "", "size": 0, "resize": "squash", "overlay": False, "compressed": False,
                      "text_cache": True, "text_cache_dir": ""}


def build_loop(settings: NodeSettings, publish, log):
    """The engine, frame processor and latest-frame loop for ``settings``."""
    import clippy_rt

    from ..text_cache import default_cache_dir
    from .processor import FrameProcessor, SegmentationLoop

    cache_dir = (settings.text_cache_dir or default_cache_dir()) if settings.text_cache else None
    engine = clippy_rt.load(settings.model, backend=settings.backend, device=settings.device,
                            precision=settings.precision, text_cache_dir=cache_dir)
    processor = FrameProcessor(engine, settings.prompts, size=settings.size, resize=settings.resize,
                               template=settings.template)
    return SegmentationLoop(processor, publish, overlay=settings.overlay, log=log)


def _fill_image(message, fields: Dict[str, Any]):
    _fill_header(message.header, fields["header"])
    message.height, message.width = fields["height"], fields["width"]
    message.encoding, message.is_bigendian, message.step = fields["encoding"], fields["is_bigendian"], fields["step"]
    message.data = array.array("B", fields["data"])
    return message


def _fill_header(header, fields: Dict[str, Any]) -> None:
    header.stamp.sec = fields["stamp"]["sec"]
    header.stamp.nanosec = fields["stamp"]["nanosec"]
    header.frame_id = fields["frame_id"]


def main(argv: Optional[List[str]] = None) -> int:
    try:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from rcl_interfaces.msg import SetParametersResult
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
    except ImportError as exc:
        print(f"clippy_rt.robotics.node: error: ROS 2 is not available ({exc}); source your ROS 2 installation first, "
              "e.g. `source /opt/ros/humble/setup.bash`", file=sys.stderr)
        return 1

    from ..errors import ClippyError
    from .processor import diagnostics_values

    rclpy.init(args=argv if argv is not None else sys.argv)
    node = Node(NODE_NAME)
    for name, default in PARAMETER_DEFAULTS.items():
        node.declare_parameter(name, default)
    logger = node.get_logger()
    try:
        settings = NodeSettings.from_parameters({name: node.get_parameter(name).value
                                                 for name in PARAMETER_DEFAULTS})
        publishers = {
            "labels": node.create_publisher(Image, "~/labels", 5),
            "overlay": node.create_publisher(Image, "~/overlay", 5),
            "classes": node.create_publisher(String, "~/classes", QoSProfile(
                depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)),
            "diagnostics": node.create_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        last_classes = [None]
        loop = None

        def publish(output) -> None:
            publishers["labels"].publish(_fill_image(Image(), output.labels))
            if output.overlay is not None:
                publishers["overlay"].publish(_fill_image(Image(), output.overlay))
            if output.classes["data"] != last_classes[0]:
                publishers["classes"].publish(String(data=output.classes["data"]))
                last_classes[0] = output.classes["data"]
            status = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{NODE_NAME}: segmentation",
                                      message="ok", hardware_id=str(loop.processor.engine.device),
                                      values=[KeyValue(key=k, value=v) for k, v in diagnostics_values(output, loop)])
            report = DiagnosticArray(status=[status])
            report.header.stamp = node.get_clock().now().to_msg()
            publishers["diagnostics"].publish(report)

        loop = build_loop(settings, publish, logger.warning)

        def on_parameters(parameters):
            for parameter in parameters:
                if parameter.name == "prompts":
                    try:
                        loop.set_prompts(str(parameter.value))
                    except ClippyError as exc:
                        return SetParametersResult(successful=False, reason=str(exc))
                    logger.info(f"prompts set to {parameter.value!r}")
                elif parameter.name in PARAMETER_DEFAULTS:
                    return SetParametersResult(successful=False,
                                               reason=f"{parameter.name} is read at start only; restart the node")
            return SetParametersResult(successful=True)

        node.add_on_set_parameters_callback(on_parameters)
        topic, kind = ("image/compressed", CompressedImage) if settings.compressed else ("image", Image)
        qos = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                         durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
        node.create_subscription(kind, topic, loop.submit, qos)
        loop.start()
        logger.info(f"segmenting {node.resolve_topic_name(topic)} into {len(loop.processor.classes)} classes "
                    f"with {loop.processor.engine!r}")
        rclpy.spin(node)
    except ClippyError as exc:
        logger.error(str(exc))
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if "loop" in locals() and loop is not None:
            loop.stop()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
