"""A ROS 2 node: camera images in, open-vocabulary labels out.

    python -m clippy_rt.robotics.node --ros-args -p model:=/path/to/model -p prompts:="floor,person,chair" \\
        -r image:=/camera/image_raw

Subscribes to ``image`` (``sensor_msgs/msg/Image``; with ``-p compressed:=true`` the
``CompressedImage`` topic image_transport publishes beside it: the resolved image topic
plus ``/compressed``, so ``-r image:=/camera/image_raw`` reads
``/camera/image_raw/compressed``) with sensor-data QoS, keeps only the latest frame, and
publishes, with the frame's header:

- ``~/labels``: mono8, pixel = class index;
- ``~/classes``: ``std_msgs/msg/String``, JSON with the class names and what produced them
  (transient local, republished when the vocabulary changes);
- ``~/overlay`` with ``-p overlay:=true`` (only then): rgb8;
- ``/diagnostics``: ``diagnostic_msgs/msg/DiagnosticArray`` once a second, named after the
  node's fully qualified name.

``prompts`` may be changed while the node runs (``ros2 param set /clippy_rt prompts
"a,b|c"``): the new value is checked when it is set (a bad vocabulary is refused with its
reason), and encoded and used only once the change is accepted, on a worker thread. Every
other parameter is read-only; each is declared with its type (and range), so a value of the
wrong type is refused at start with the reason, and the node exits cleanly (status 1).
SIGINT and SIGTERM end it with status 0.

rclpy is imported only by ``main``; everything else here runs without ROS 2.
"""

from __future__ import annotations

import array
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

NODE_NAME = "clippy_rt"
DIAGNOSTICS_PERIOD_S = 1.0
ACCEPT_WAIT_S = 2.0


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    kind: type           # str, int or bool
    default: Any
    description: str
    read_only: bool = True
    minimum: Optional[int] = None
    maximum: Optional[int] = None


def parameter_specs() -> List[ParameterSpec]:
    from ..images import WHOLE_FRAME_MODES
    from ..limits import MAX_INPUT_SIDE

    return [
        ParameterSpec("model", str, "", "model directory, ONNX or engine directory, or 'demo' (required)"),
        ParameterSpec("prompts", str, "", 'classes, e.g. "background|floor,person,chair" (required; settable)',
                      read_only=False),
        ParameterSpec("backend", str, "", "inference backend (empty: the one that loads the model's kind)"),
        ParameterSpec("device", str, "", "cpu or cuda[:N] (empty: the backend's default)"),
        ParameterSpec("precision", str, "", "compute precision (empty: the backend's default)"),
        ParameterSpec("template", str, "", 'prompt template, e.g. "a photo of {article} {}" '
                      '(empty: the model\'s template; "{}": prompts verbatim)'),
        ParameterSpec("size", int, 0, "model input size in pixels (0: the model's)", minimum=0,
                      maximum=MAX_INPUT_SIDE),
        ParameterSpec("resize", str, "squash", f"how frames are fitted: {' or '.join(WHOLE_FRAME_MODES)}"),
        ParameterSpec("overlay", bool, False, "also publish ~/overlay (rgb8)"),
        ParameterSpec("compressed", bool, False, "subscribe to <image topic>/compressed (CompressedImage)"),
        ParameterSpec("text_cache", bool, True, "cache text embeddings on disk"),
        ParameterSpec("text_cache_dir", str, "", "text cache directory (empty: ~/.cache/clippy-rt/text)"),
    ]


PARAMETER_DEFAULTS = {spec.name: spec.default for spec in parameter_specs()}
_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean (true or false)"}


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a double"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def check_parameter(spec: ParameterSpec, value: Any) -> Optional[str]:
    """Why ``value`` is not acceptable for ``spec`` (one sentence), or None."""
    if spec.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec.kind)
    if not ok:
        hint = ' (quote it to pass a string: -p NAME:="\'1\'")'.replace("NAME", spec.name) if spec.kind is str else ""
        return f"parameter '{spec.name}' must be {_KIND_NAMES[spec.kind]}, got {value!r} ({_kind_of(value)}){hint}"
    if spec.minimum is not None and not spec.minimum <= value <= spec.maximum:
        return f"parameter '{spec.name}' must lie in [{spec.minimum}, {spec.maximum}], got {value}"
    return None


@dataclass(frozen=True)
class NodeSettings:
    """The node's parameters, checked."""

    model: str
    prompts: str
    backend: Optional[str] = None
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
        """ROS parameter values (empty strings and 0 meaning "default") -> settings; a value
        of the wrong type or out of range, a missing model or bad prompts is an ``InputError``."""
        from ..errors import InputError
        from ..images import WHOLE_FRAME_MODES
        from .processor import parse_prompts

        for spec in parameter_specs():
            problem = check_parameter(spec, values.get(spec.name, spec.default))
            if problem:
                raise InputError(problem)

        def text(name: str) -> Optional[str]:
            value = values.get(name)
            return str(value) if value not in (None, "") else None

        if not text("model"):
            raise InputError("parameter 'model' is required (-p model:=/path/to/model or demo)")
        if not text("prompts"):
            raise InputError("parameter 'prompts' is required (-p prompts:=\"floor,person,chair\")")
        resize = text("resize") or "squash"
        if resize not in WHOLE_FRAME_MODES:
            raise InputError(f"parameter 'resize' must be {' or '.join(WHOLE_FRAME_MODES)}, got {resize!r}")
        parse_prompts(text("prompts"), text("template"))
        return cls(model=text("model"), prompts=text("prompts"), backend=text("backend"),
                   device=text("device"), precision=text("precision"), template=text("template"),
                   size=values.get("size") or None, resize=resize, overlay=bool(values.get("overlay", False)),
                   compressed=bool(values.get("compressed", False)),
                   text_cache=bool(values.get("text_cache", True)), text_cache_dir=text("text_cache_dir"))


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


class VocabularyUpdater:
    """Applies accepted ``prompts`` changes off the executor thread: ``submit(value,
    accepted)`` queues one (a newer one replaces a waiting one); the worker encodes it, then
    uses it once ``accepted()`` is true (waiting up to ``wait_s``; a change never accepted is
    dropped). An encoding failure of any kind is logged and the current vocabulary stays."""

    def __init__(self, processor, log_info: Callable[[str], None], log_error: Callable[[str], None], *,
                 wait_s: float = ACCEPT_WAIT_S, poll_s: float = 0.01) -> None:
        from .processor import LatestSlot

        self.processor = processor
        self.log_info, self.log_error = log_info, log_error
        self.wait_s, self.poll_s = wait_s, poll_s
        self.slot = LatestSlot()
        self.applied = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clippy-rt-prompts", daemon=True)
        self._thread.start()

    def submit(self, value: str, accepted: Callable[[], bool] = lambda: True) -> None:
        self.slot.put((value, accepted))

    def _run(self) -> None:
        while not self._stop.is_set():
            taken = self.slot.take(timeout=0.1)
            if taken is not None:
                self.apply(*taken[0])

    def apply(self, value: str, accepted: Callable[[], bool]) -> bool:
        try:
            prompt_set = self.processor.prepare_prompts(value)
        except Exception as exc:  # noqa: BLE001 - any failure (torch's too) must not end the node
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log_error(f"prompts {value!r} could not be encoded ({reason}); the current vocabulary stays")
            return False
        waited = 0.0
        while not accepted():
            if waited >= self.wait_s or self._stop.is_set():
                return False          # refused by another parameter callback
            self._stop.wait(self.poll_s)
            waited += self.poll_s
        self.processor.use_prompts(prompt_set)
        self.applied += 1
        self.log_info(f"prompts set to {value!r}")
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.slot.close()
        self._thread.join(timeout)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    try:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        from rcl_interfaces.msg import IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
        from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
        from rclpy.executors import ExternalShutdownException
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String
    except ImportError as exc:
        print(f"clippy_rt.robotics.node: error: ROS 2 is not available ({exc}); source your ROS 2 installation first, "
              "e.g. `source /opt/ros/humble/setup.bash`", file=sys.stderr)
        return 1

    from .processor import diagnostics_values

    types = {str: ParameterType.PARAMETER_STRING, int: ParameterType.PARAMETER_INTEGER,
             bool: ParameterType.PARAMETER_BOOL}
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = Node(NODE_NAME)
    logger = node.get_logger()
    loop = updater = None
    code = 0
    try:
        # Each parameter is typed (and ranged): a wrong value given at start is refused here,
        # with the reason, and the node still ends cleanly.
        problems = []
        for spec in parameter_specs():
            descriptor = ParameterDescriptor(description=spec.description, type=types[spec.kind],
                                             read_only=spec.read_only)
            if spec.minimum is not None:
                descriptor.integer_range = [IntegerRange(from_value=spec.minimum, to_value=spec.maximum, step=0)]
            try:
                node.declare_parameter(spec.name, spec.default, descriptor)
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                problems.append(f"parameter '{spec.name}': {_first_line(exc)} ({spec.description})")
        if problems:
            for problem in problems:
                logger.error(problem)
            return 1
        settings = NodeSettings.from_parameters({spec.name: node.get_parameter(spec.name).value
                                                 for spec in parameter_specs()})
        publishers = {"labels": node.create_publisher(Image, "~/labels", 5),
                      "classes": node.create_publisher(String, "~/classes", QoSProfile(
                          depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)),
                      "diagnostics": node.create_publisher(DiagnosticArray, "/diagnostics", 10)}
        if settings.overlay:
            publishers["overlay"] = node.create_publisher(Image, "~/overlay", 5)
        last_classes = [None]

        def publish(output) -> None:
            publishers["labels"].publish(_fill_image(Image(), output.labels))
            if output.overlay is not None and "overlay" in publishers:
                publishers["overlay"].publish(_fill_image(Image(), output.overlay))
            if output.classes["data"] != last_classes[0]:
                publishers["classes"].publish(String(data=output.classes["data"]))
                last_classes[0] = output.classes["data"]

        image_topic = node.resolve_topic_name("image")
        topic, kind = (image_topic + "/compressed", CompressedImage) if settings.compressed else (image_topic, Image)
        loop = build_loop(settings, publish, lambda line: logger.warning(line))
        loop.provenance = lambda: dict(loop.processor.provenance(), source_topic=topic)
        name = node.get_fully_qualified_name()

        def publish_diagnostics() -> None:
            output = loop.last_output
            status = DiagnosticStatus(level=DiagnosticStatus.OK if output is not None else DiagnosticStatus.WARN,
                                      name=f"{name}: segmentation",
                                      message="ok" if output is not None else "no frame segmented yet",
                                      hardware_id=str(loop.processor.engine.device),
                                      values=[KeyValue(key=k, value=v) for k, v in (
                                          diagnostics_values(output, loop) if output is not None else [])])
            report = DiagnosticArray(status=[status])
            report.header.stamp = node.get_clock().now().to_msg()
            publishers["diagnostics"].publish(report)

        node.create_timer(DIAGNOSTICS_PERIOD_S, publish_diagnostics)
        updater = VocabularyUpdater(loop.processor, lambda line: logger.info(line), lambda line: logger.error(line))
        template = settings.template

        def validate(parameters):
            from ..errors import ClippyError
            from .processor import parse_prompts

            for parameter in parameters:
                if parameter.name == "prompts":
                    try:
                        parse_prompts(str(parameter.value), template)
                    except ClippyError as exc:
                        return SetParametersResult(successful=False, reason=_first_line(exc))
            return SetParametersResult(successful=True)

        if hasattr(node, "add_post_set_parameters_callback"):       # Iron and later: after acceptance
            def applied(parameters) -> None:
                for parameter in parameters:
                    if parameter.name == "prompts":
                        updater.submit(str(parameter.value))

            node.add_on_set_parameters_callback(validate)
            node.add_post_set_parameters_callback(applied)
        else:                                                        # Humble: no post-set callbacks
            def validate_then_apply(parameters):
                result = validate(parameters)
                if result.successful:
                    for parameter in parameters:
                        if parameter.name == "prompts":
                            value = str(parameter.value)
                            # used once the parameter holds it: another callback may still refuse it
                            updater.submit(value, lambda: node.get_parameter("prompts").value == value)
                return result

            node.add_on_set_parameters_callback(validate_then_apply)

        qos = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                         durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
        node.create_subscription(kind, topic, loop.submit, qos)
        loop.start()
        logger.info(f"segmenting {topic} into {len(loop.processor.classes)} classes with {loop.processor.engine!r}")
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass                                   # SIGINT or SIGTERM: a normal end
    except Exception as exc:  # noqa: BLE001 - a load or runtime error: one line, then a clean end
        logger.error(_first_line(exc))
        code = 1
    finally:
        if updater is not None:
            updater.stop()
        if loop is not None:
            loop.stop()                        # nothing is published after this returns
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
