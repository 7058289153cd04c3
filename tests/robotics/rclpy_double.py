"""A strict stand-in for rclpy and the message packages the node imports, written from the
signatures and behaviour of rclpy's humble and jazzy branches (rclpy/node.py, __init__.py,
utilities.py, exceptions.py, executors.py, qos.py; rosidl-generated message classes).

Strict where the real thing is: keyword-only arguments and unknown keywords are TypeErrors
(plain Python signatures copied from rclpy), message constructors refuse unknown fields
and wrong types (AssertionError, as rosidl's generated setters do), ``publish`` refuses a
message of another type (TypeError), parameters are typed by their descriptor or default
(``InvalidParameterTypeException``, range checks as ``InvalidParameterValueException``),
read-only parameters refuse ``set_parameters``, on-set callbacks run before a change is
stored, post-set callbacks (jazzy only) after, ``use_sim_time`` is declared by the node
itself, names are expanded and remapped by exact name as rcl does, a second ``shutdown``
raises, and ``spin`` raises ``ExternalShutdownException`` when the context is shut down
by a signal. ``install(monkeypatch, distro)`` puts the modules in ``sys.modules`` and
returns a ``World`` through which a test plays the rest of the ROS graph.
"""

from __future__ import annotations

import array
import enum
import re
import sys
import threading
import types
from typing import Any, Callable, Dict, List, Optional


# --- messages -------------------------------------------------------------------------------

def _is_uint(bits):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** bits


def _is_int(bits):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and -2 ** (bits - 1) <= v < 2 ** (bits - 1)


def _is_str(v):
    return isinstance(v, str)


def _is_bool(v):
    return isinstance(v, bool)


def _is_byte(v):
    return isinstance(v, bytes) and len(v) == 1


def _is_float(v):
    return isinstance(v, float)


def _is_uint8_array(v):
    return isinstance(v, array.array) and v.typecode == "B"


class Message:
    """rosidl-style message: fixed fields with default factories and setter type checks."""

    FIELDS: Dict[str, tuple] = {}   # name -> (check, default factory)

    def __init__(self, **kwargs):
        assert all(key in self.FIELDS for key in kwargs), \
            f"Invalid arguments passed to constructor: {', '.join(k for k in kwargs if k not in self.FIELDS)}"
        for name, (_, factory) in self.FIELDS.items():
            setattr(self, name, kwargs[name] if name in kwargs else factory())

    def __setattr__(self, name, value):
        if name not in self.FIELDS:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        check = self.FIELDS[name][0]
        if isinstance(check, type):
            assert isinstance(value, check), f"The '{name}' field must be a sub message of type '{check.__name__}'"
        elif check is _is_uint8_array and not _is_uint8_array(value):
            # rosidl converts a sequence of ints in [0, 255] to array('B'), and refuses anything else
            assert not isinstance(value, str) and all(_is_uint(8)(item) for item in value), \
                f"The '{name}' field must be a set or sequence and each value of type 'int' in [0, 255]"
            value = array.array("B", value)
        elif isinstance(check, list):
            assert isinstance(value, list) and all(isinstance(item, check[0]) for item in value), \
                f"The '{name}' field must be a list of '{check[0].__name__}'"
        else:
            assert check(value), f"The '{name}' field has a value of the wrong type: {value!r}"
        object.__setattr__(self, name, value)


class Time(Message):
    FIELDS = {"sec": (_is_int(32), int), "nanosec": (_is_uint(32), int)}


class Header(Message):
    FIELDS = {"stamp": (Time, Time), "frame_id": (_is_str, str)}


class Image(Message):
    FIELDS = {"header": (Header, Header), "height": (_is_uint(32), int), "width": (_is_uint(32), int),
              "encoding": (_is_str, str), "is_bigendian": (_is_uint(8), int), "step": (_is_uint(32), int),
              "data": (_is_uint8_array, lambda: array.array("B"))}


class CompressedImage(Message):
    FIELDS = {"header": (Header, Header), "format": (_is_str, str),
              "data": (_is_uint8_array, lambda: array.array("B"))}


class String(Message):
    FIELDS = {"data": (_is_str, str)}


class KeyValue(Message):
    FIELDS = {"key": (_is_str, str), "value": (_is_str, str)}


class DiagnosticStatus(Message):
    OK, WARN, ERROR, STALE = b"\x00", b"\x01", b"\x02", b"\x03"
    FIELDS = {"level": (_is_byte, lambda: b"\x00"), "name": (_is_str, str), "message": (_is_str, str),
              "hardware_id": (_is_str, str), "values": ([KeyValue], list)}


class DiagnosticArray(Message):
    FIELDS = {"header": (Header, Header), "status": ([DiagnosticStatus], list)}


class ParameterType:
    PARAMETER_NOT_SET, PARAMETER_BOOL, PARAMETER_INTEGER, PARAMETER_DOUBLE, PARAMETER_STRING = 0, 1, 2, 3, 4


class IntegerRange(Message):
    FIELDS = {"from_value": (_is_int(64), int), "to_value": (_is_int(64), int), "step": (_is_uint(64), int)}


class FloatingPointRange(Message):
    FIELDS = {"from_value": (_is_float, float), "to_value": (_is_float, float), "step": (_is_float, float)}


class ParameterDescriptor(Message):
    FIELDS = {"name": (_is_str, str), "type": (_is_uint(8), int), "description": (_is_str, str),
              "additional_constraints": (_is_str, str), "read_only": (_is_bool, bool),
              "dynamic_typing": (_is_bool, bool), "floating_point_range": ([FloatingPointRange], list),
              "integer_range": ([IntegerRange], list)}

    def __setattr__(self, name, value):
        if name in ("integer_range", "floating_point_range") and isinstance(value, list):
            assert len(value) <= 1, f"The '{name}' field holds at most one range"
        super().__setattr__(name, value)


class SetParametersResult(Message):
    FIELDS = {"successful": (_is_bool, bool), "reason": (_is_str, str)}


# --- parameters and exceptions ------------------------------------------------------------

class ParameterException(Exception):
    pass


class ParameterAlreadyDeclaredException(ParameterException):
    def __init__(self, parameters, *args):
        Exception.__init__(self, "Parameter(s) already declared", parameters, *args)


class ParameterNotDeclaredException(ParameterException):
    def __init__(self, parameters, *args):
        Exception.__init__(self, "Invalid access to undeclared parameter(s)", parameters, *args)


class InvalidParameterTypeException(ParameterException):
    def __init__(self, desired_parameter, expected_type, *args):
        Exception.__init__(self, f"Trying to set parameter '{desired_parameter.name}' to "
                                 f"'{desired_parameter.value}' of type "
                                 f"'{Parameter.Type.from_parameter_value(desired_parameter.value).name}', "
                                 f"expecting type '{expected_type}'", *args)


class InvalidParameterValueException(ParameterException):
    def __init__(self, parameter, value, reason, *args):
        Exception.__init__(self, f"Invalid parameter value ({value}) for parameter. Reason: {reason}",
                           parameter, *args)


class ExternalShutdownException(Exception):
    """Context has been shutdown."""


class Parameter:
    class Type(enum.IntEnum):
        NOT_SET = 0
        BOOL = 1
        INTEGER = 2
        DOUBLE = 3
        STRING = 4

        @classmethod
        def from_parameter_value(cls, value):
            if value is None:
                return cls.NOT_SET
            if isinstance(value, bool):
                return cls.BOOL
            if isinstance(value, int):
                return cls.INTEGER
            if isinstance(value, float):
                return cls.DOUBLE
            if isinstance(value, str):
                return cls.STRING
            raise TypeError(f"The given value is not one of the allowed types '{value}'.")

    def __init__(self, name, type_=None, value=None):
        if type_ is None:
            type_ = Parameter.Type.from_parameter_value(value)
        self._name, self._type_, self._value = name, type_, value

    name = property(lambda self: self._name)
    value = property(lambda self: self._value)
    type_ = property(lambda self: self._type_)


def _yaml_value(text: str):
    """A ``-p name:=value`` value as ROS 2 reads it (YAML scalars)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("true", "True"):
        return True
    if text in ("false", "False"):
        return False
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", text):
        return float(text)
    return text


def _node_pattern(key: str) -> "re.Pattern":
    """A params file's node key as rcl matches it: ``/**`` any namespace depth, ``*`` one
    name token, a key without a leading slash is relative to the root."""
    key = key if key.startswith("/") else "/" + key
    parts = re.split(r"(/\*\*|\*)", key)
    body = "".join({"/**": "(/[^/]+)*", "*": "[^/]+"}.get(part, re.escape(part)) for part in parts)
    return re.compile(body + "$")


def _params_file(path: str, fully_qualified_name: str) -> Dict[str, Any]:
    """The parameters a YAML params file gives the node ``fully_qualified_name`` (rcl_yaml_param_parser:
    ``<node key>: {ros__parameters: {...}}``, nested maps as dotted names); a file that is
    not such a map is an error, as in rcl."""
    import yaml

    with open(path) as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise RuntimeError(f"failed to parse parameters from file '{path}': not a map of node names")
    found: Dict[str, Any] = {}

    def flatten(prefix: str, values) -> None:
        for name, value in values.items():
            if isinstance(value, dict):
                flatten(f"{prefix}{name}.", value)
            else:
                found[prefix + name] = value

    for key, entry in document.items():
        if not isinstance(entry, dict) or set(entry) != {"ros__parameters"}:
            raise RuntimeError(f"failed to parse parameters from file '{path}': {key!r} needs 'ros__parameters'")
        if _node_pattern(str(key)).match(fully_qualified_name):
            flatten("", entry["ros__parameters"])
    return found


# --- QoS ------------------------------------------------------------------------------------

class HistoryPolicy(enum.IntEnum):
    SYSTEM_DEFAULT, KEEP_LAST, KEEP_ALL = 0, 1, 2


class ReliabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT, RELIABLE, BEST_EFFORT = 0, 1, 2


class DurabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT, TRANSIENT_LOCAL, VOLATILE = 0, 1, 2


class InvalidQoSProfileException(Exception):
    pass


class QoSProfile:
    _KEYS = ("history", "depth", "reliability", "durability", "lifespan", "deadline", "liveliness",
             "liveliness_lease_duration", "avoid_ros_namespace_conventions")

    def __init__(self, **kwargs):
        assert all(key in self._KEYS for key in kwargs), \
            f"Invalid arguments passed to constructor: {', '.join(k for k in kwargs if k not in self._KEYS)}"
        if "history" not in kwargs:
            if "depth" not in kwargs:
                raise InvalidQoSProfileException("History and/or depth settings are required.")
            kwargs["history"] = HistoryPolicy.KEEP_LAST
        self.history = HistoryPolicy(kwargs["history"])
        self.depth = kwargs.get("depth", 0)
        self.reliability = ReliabilityPolicy(kwargs.get("reliability", ReliabilityPolicy.RELIABLE))
        self.durability = DurabilityPolicy(kwargs.get("durability", DurabilityPolicy.VOLATILE))


qos_profile_sensor_data = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                                     reliability=ReliabilityPolicy.BEST_EFFORT,
                                     durability=DurabilityPolicy.VOLATILE)


# --- graph ----------------------------------------------------------------------------------

_NAME = re.compile(r"^[~/A-Za-z_][A-Za-z0-9_/]*$")


class World:
    """The ROS graph around the node under test: the context, what was published, log lines,
    and the ``play`` callback that ``rclpy.spin`` runs (it stands for the rest of the graph)."""

    def __init__(self, distro: str) -> None:
        self.distro = distro
        self.initialized = False
        self.args: List[str] = []
        self.nodes: List["Node"] = []
        self.logs: List[tuple] = []
        self.play: Callable[["World", "Node"], None] = lambda world, node: world.signal("SIGTERM")
        self.signalled: Optional[str] = None
        self.destroyed_with: Dict[str, int] = {}

    # rclpy parses --ros-args: -p name:=value, --params-file FILE, -r from:=to, -r __ns:=/x,
    # -r __node:=name. Parameter rules apply in the order given (a later one wins); a params
    # file's entries apply to the nodes its keys match, so rules are resolved per node.
    def ros_arguments(self):
        rules, remaps, inside = [], {}, False
        iterator = iter(self.args)
        for item in iterator:
            if item == "--ros-args":
                inside = True
            elif item == "--" and inside:
                inside = False
            elif inside and item in ("-p", "--param"):
                name, separator, value = next(iterator).partition(":=")
                if not separator:
                    raise RuntimeError(f"couldn't parse parameter override rule: '-p {name}' (want name:=value)")
                rules.append(("param", name, _yaml_value(value)))
            elif inside and item == "--params-file":
                rules.append(("file", next(iterator)))
            elif inside and item in ("-r", "--remap"):
                source, _, target = next(iterator).partition(":=")
                remaps[source] = target
            elif inside:
                raise RuntimeError(f"unknown ROS argument {item!r}")
        return rules, remaps

    def signal(self, name: str) -> None:
        """SIGINT / SIGTERM under rclpy's handlers: the context is shut down."""
        self.signalled = name
        self.initialized = False

    def published(self, topic: str) -> List[Any]:
        for node in self.nodes:
            for publisher in node.publishers:
                if publisher.topic == topic:
                    return publisher.messages
        raise KeyError(f"nothing publishes {topic}; topics: {[p.topic for n in self.nodes for p in n.publishers]}")

    def topics(self) -> List[str]:
        return sorted(p.topic for n in self.nodes for p in n.publishers)


class Logger:
    def __init__(self, world: World, name: str) -> None:
        self.world, self.name = world, name

    def _log(self, level, message, **kwargs):
        if not isinstance(message, str):
            raise TypeError(f"the message must be a str, got {type(message).__name__}")
        unknown = set(kwargs) - {"throttle_duration_sec", "throttle_time_source_type", "skip_first", "once"}
        if unknown:
            raise TypeError(f"unknown logging options {unknown}")
        self.world.logs.append((level, message))

    def debug(self, message, **kwargs):
        self._log("debug", message, **kwargs)

    def info(self, message, **kwargs):
        self._log("info", message, **kwargs)

    def warning(self, message, **kwargs):
        self._log("warning", message, **kwargs)

    warn = warning

    def error(self, message, **kwargs):
        self._log("error", message, **kwargs)

    def fatal(self, message, **kwargs):
        self._log("fatal", message, **kwargs)


class Publisher:
    def __init__(self, node, msg_type, topic, qos) -> None:
        self.node, self.msg_type, self.topic, self.qos = node, msg_type, topic, qos
        self.messages: List[Any] = []

    def publish(self, msg) -> None:
        if self.node.destroyed:
            raise RuntimeError("publisher's node has been destroyed (InvalidHandle)")
        if not isinstance(msg, self.msg_type):
            raise TypeError(f"Expected {self.msg_type}, got {type(msg)}")
        self.messages.append(msg)


class Subscription:
    def __init__(self, msg_type, topic, callback, qos) -> None:
        self.msg_type, self.topic, self.callback, self.qos = msg_type, topic, callback, qos


class Timer:
    def __init__(self, period, callback) -> None:
        self.timer_period_ns = int(period * 1e9)
        self.callback = callback


class _Now:
    def to_msg(self):
        return Time(sec=1700000000, nanosec=5)


class Clock:
    def now(self):
        return _Now()


class Node:
    """rclpy.node.Node with the signatures of the chosen distro."""

    def __init__(self, node_name, *, context=None, cli_args=None, namespace=None, use_global_arguments=True,
                 enable_rosout=True, start_parameter_services=True, parameter_overrides=None,
                 allow_undeclared_parameters=False, automatically_declare_parameters_from_overrides=False,
                 **distro_only):
        world = _WORLD[0]
        allowed = {"enable_logger_service"} if world.distro == "jazzy" else set()
        if set(distro_only) - allowed:
            raise TypeError(f"Node.__init__() got an unexpected keyword argument {sorted(set(distro_only) - allowed)[0]!r}")
        if not world.initialized:
            raise RuntimeError("rclpy.init() has not been called (NotInitializedException)")
        if not isinstance(node_name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", node_name):
            raise ValueError(f"invalid node name {node_name!r}")
        self.world = world
        rules, self._remaps = world.ros_arguments()
        self._name = self._remaps.get("__node", node_name)
        self._namespace = self._remaps.get("__ns", namespace or "/")
        self._overrides = {}
        for rule in rules:
            if rule[0] == "param":
                self._overrides[rule[1]] = rule[2]
            else:
                self._overrides.update(_params_file(rule[1], self.get_fully_qualified_name()))
        self._parameters: Dict[str, Parameter] = {}
        self._descriptors: Dict[str, ParameterDescriptor] = {}
        self._on_set: List[Callable] = []
        self._post_set: List[Callable] = []
        self.publishers: List[Publisher] = []
        self.subscriptions: List[Subscription] = []
        self.timers: List[Timer] = []
        self.destroyed = False
        world.nodes.append(self)
        # rclpy's TimeSource declares use_sim_time on every node
        self.declare_parameter("use_sim_time", False)

    def __getattribute__(self, name):
        if name in ("add_post_set_parameters_callback", "add_pre_set_parameters_callback") and \
                object.__getattribute__(self, "world").distro == "humble":
            raise AttributeError(f"'Node' object has no attribute '{name}'")
        return object.__getattribute__(self, name)

    # names
    def get_name(self) -> str:
        return self._name

    def get_namespace(self) -> str:
        return self._namespace

    def get_fully_qualified_name(self) -> str:
        return f"{self._namespace.rstrip('/')}/{self._name}"

    def _expand(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name) or "//" in name or name.endswith("/"):
            raise ValueError(f"invalid topic name {name!r}")
        if name.startswith("~"):
            return self.get_fully_qualified_name() + name[1:]
        if name.startswith("/"):
            return name
        return f"{self._namespace.rstrip('/')}/{name}"

    def resolve_topic_name(self, topic: str, *, only_expand: bool = False) -> str:
        expanded = self._expand(topic)
        if only_expand:
            return expanded
        for source, target in self._remaps.items():       # rcl: exact match of the expanded names
            if not source.startswith("__") and self._expand(source) == expanded:
                return self._expand(target)
        return expanded

    def get_logger(self):
        return Logger(self.world, self._name)

    def get_clock(self):
        return Clock()

    # parameters (rclpy/node.py: declare_parameters, _set_parameters_atomically, _apply_descriptor)
    def declare_parameter(self, name: str, value: Any = None, descriptor: Optional[ParameterDescriptor] = None,
                          ignore_override: bool = False) -> Parameter:
        if descriptor is None:
            descriptor = ParameterDescriptor()
        if not isinstance(descriptor, ParameterDescriptor):
            raise TypeError(f"Third element {descriptor} at index 0 in parameters list is not a ParameterDescriptor.")
        if name in self._parameters:
            raise ParameterAlreadyDeclaredException([name])
        if not descriptor.dynamic_typing and value is not None:
            descriptor.type = int(Parameter.Type.from_parameter_value(value))
        if not ignore_override and name in self._overrides:
            value = self._overrides[name]
        parameter = Parameter(name, value=value)
        result = self._set_atomically([parameter], {name: descriptor}, check_read_only=False)
        if not result.successful:
            if result.reason.startswith("Wrong parameter type"):
                raise InvalidParameterTypeException(parameter, Parameter.Type(descriptor.type).name)
            raise InvalidParameterValueException(name, value, result.reason)
        return self._parameters[name]

    def get_parameter(self, name: str) -> Parameter:
        if name not in self._parameters:
            raise ParameterNotDeclaredException(name)
        return self._parameters[name]

    def _apply_descriptor(self, parameter, descriptor, check_read_only) -> SetParametersResult:
        descriptor.name = parameter.name
        if check_read_only and descriptor.read_only:
            return SetParametersResult(successful=False,
                                       reason=f"Trying to set a read-only parameter: {parameter.name}.")
        if descriptor.dynamic_typing:
            descriptor.type = int(parameter.type_)
        elif parameter.type_ != Parameter.Type.NOT_SET and int(parameter.type_) != descriptor.type:
            return SetParametersResult(successful=False, reason=(
                f"Wrong parameter type, expected '{Parameter.Type(descriptor.type)}' got '{parameter.type_}'"))
        if parameter.type_ == Parameter.Type.INTEGER and descriptor.integer_range:
            bounds = descriptor.integer_range[0]
            low, high = sorted((bounds.from_value, bounds.to_value))
            if parameter.value not in (low, high) and not low < parameter.value < high:
                return SetParametersResult(successful=False, reason=(
                    f"Parameter {parameter.name} out of range. Min: {low}, Max: {high}, value: {parameter.value}"))
            if bounds.step and (parameter.value - low) % bounds.step:
                return SetParametersResult(successful=False, reason="not a valid step")
        return SetParametersResult(successful=True)

    def _set_atomically(self, parameters, descriptors=None, check_read_only=True) -> SetParametersResult:
        for parameter in parameters:
            descriptor = (descriptors or self._descriptors).get(parameter.name)
            if descriptor is not None:
                result = self._apply_descriptor(parameter, descriptor, check_read_only)
                if not result.successful:
                    return result
        for callback in self._on_set:
            result = callback(parameters)
            if not isinstance(result, SetParametersResult):
                raise TypeError("an on-set parameters callback must return a SetParametersResult")
            if not result.successful:
                return result
        for parameter in parameters:
            if descriptors is not None:
                self._descriptors[parameter.name] = descriptors[parameter.name]
            self._parameters[parameter.name] = parameter
        for callback in self._post_set:
            callback(parameters)
        return SetParametersResult(successful=True)

    def set_parameters(self, parameter_list: List[Parameter]) -> List[SetParametersResult]:
        if not all(isinstance(p, Parameter) for p in parameter_list):
            raise TypeError("parameter must be instance of type 'Parameter'")
        missing = [p.name for p in parameter_list if p.name not in self._parameters]
        if missing:
            raise ParameterNotDeclaredException(missing)
        return [self._set_atomically([p]) for p in parameter_list]

    def set_parameters_atomically(self, parameter_list: List[Parameter]) -> SetParametersResult:
        missing = [p.name for p in parameter_list if p.name not in self._parameters]
        if missing:
            raise ParameterNotDeclaredException(missing)
        return self._set_atomically(list(parameter_list))

    def add_on_set_parameters_callback(self, callback) -> None:
        self._on_set.insert(0, callback)

    def remove_on_set_parameters_callback(self, callback) -> None:
        self._on_set.remove(callback)

    def add_post_set_parameters_callback(self, callback) -> None:   # jazzy (Iron and later) only
        self._post_set.insert(0, callback)

    def add_pre_set_parameters_callback(self, callback) -> None:    # jazzy (Iron and later) only
        raise NotImplementedError("not used by the node")

    # entities
    def _check_msg_type(self, msg_type):
        if not (isinstance(msg_type, type) and issubclass(msg_type, Message)):
            raise TypeError(f"{msg_type!r} is not a message type")

    def _check_qos(self, qos_profile):
        if not (isinstance(qos_profile, QoSProfile) or (isinstance(qos_profile, int) and not
                                                        isinstance(qos_profile, bool))):
            raise TypeError("Expected QoSProfile or int, but received {!r}".format(type(qos_profile)))

    def create_publisher(self, msg_type, topic: str, qos_profile, *, callback_group=None, event_callbacks=None,
                         qos_overriding_options=None, publisher_class=None):
        self._check_msg_type(msg_type)
        self._check_qos(qos_profile)
        publisher = Publisher(self, msg_type, self.resolve_topic_name(topic), qos_profile)
        self.publishers.append(publisher)
        return publisher

    def create_subscription(self, msg_type, topic: str, callback, qos_profile, *, callback_group=None,
                            event_callbacks=None, qos_overriding_options=None, raw: bool = False):
        self._check_msg_type(msg_type)
        self._check_qos(qos_profile)
        if not callable(callback):
            raise TypeError("callback must be callable")
        subscription = Subscription(msg_type, self.resolve_topic_name(topic), callback, qos_profile)
        self.subscriptions.append(subscription)
        return subscription

    def create_timer(self, timer_period_sec: float, callback, callback_group=None, clock=None, **distro_only):
        if set(distro_only) - ({"autostart"} if self.world.distro == "jazzy" else set()):
            raise TypeError(f"create_timer() got an unexpected keyword argument {sorted(distro_only)[0]!r}")
        if not isinstance(timer_period_sec, (int, float)) or timer_period_sec <= 0:
            raise ValueError("timer period must be positive")
        timer = Timer(timer_period_sec, callback)
        self.timers.append(timer)
        return timer

    def destroy_node(self):
        self.destroyed = True
        self.world.destroyed_with = {"publishers": len(self.publishers)}

    # what the rest of the graph does
    def deliver(self, topic: str, message) -> None:
        for subscription in self.subscriptions:
            if subscription.topic == topic:
                if not isinstance(message, subscription.msg_type):
                    raise TypeError("a message of another type on the topic")
                subscription.callback(message)

    def fire_timers(self) -> None:
        for timer in self.timers:
            timer.callback()


_WORLD: List[World] = []


def install(monkeypatch, distro: str = "humble") -> World:
    """Put the double's rclpy and message modules in ``sys.modules``; returns the World."""
    world = World(distro)
    _WORLD[:] = [world]

    def init(*, args: Optional[List[str]] = None, context=None, domain_id: Optional[int] = None,
             signal_handler_options=None) -> None:
        if world.initialized:
            raise RuntimeError("Context.init() must only be called once")
        world.initialized, world.args = True, list(args or [])

    def ok(*, context=None) -> bool:
        return world.initialized

    def shutdown(*, context=None, uninstall_handlers: Optional[bool] = None) -> None:
        if not world.initialized:
            raise RuntimeError("Context must be initialized before it can be shutdown")
        world.initialized = False

    def try_shutdown(*, context=None) -> None:
        world.initialized = False

    def spin(node, executor=None) -> None:
        if not isinstance(node, Node):
            raise TypeError("spin() needs a Node")
        world.play(world, node)
        if world.signalled == "SIGINT" and distro == "jazzy":
            raise KeyboardInterrupt
        if not world.initialized:
            raise ExternalShutdownException()
        raise AssertionError("the test's play() must end by a signal")

    modules = {
        "rclpy": dict(init=init, ok=ok, shutdown=shutdown, try_shutdown=try_shutdown, spin=spin),
        "rclpy.node": dict(Node=Node),
        "rclpy.qos": dict(QoSProfile=QoSProfile, DurabilityPolicy=DurabilityPolicy,
                          ReliabilityPolicy=ReliabilityPolicy, HistoryPolicy=HistoryPolicy,
                          qos_profile_sensor_data=qos_profile_sensor_data),
        "rclpy.executors": dict(ExternalShutdownException=ExternalShutdownException),
        "rclpy.exceptions": dict(InvalidParameterTypeException=InvalidParameterTypeException,
                                 InvalidParameterValueException=InvalidParameterValueException,
                                 ParameterAlreadyDeclaredException=ParameterAlreadyDeclaredException,
                                 ParameterNotDeclaredException=ParameterNotDeclaredException),
        "rclpy.parameter": dict(Parameter=Parameter),
        "rcl_interfaces": {}, "rcl_interfaces.msg": dict(
            SetParametersResult=SetParametersResult, ParameterDescriptor=ParameterDescriptor,
            ParameterType=ParameterType, IntegerRange=IntegerRange, FloatingPointRange=FloatingPointRange),
        "sensor_msgs": {}, "sensor_msgs.msg": dict(Image=Image, CompressedImage=CompressedImage),
        "std_msgs": {}, "std_msgs.msg": dict(String=String, Header=Header),
        "diagnostic_msgs": {}, "diagnostic_msgs.msg": dict(DiagnosticArray=DiagnosticArray,
                                                           DiagnosticStatus=DiagnosticStatus, KeyValue=KeyValue),
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    return world


def wait_for(predicate, timeout: float = 30.0) -> None:
    """Poll ``predicate`` (the node works on its own threads) until true, or fail."""
    event = threading.Event()
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("timed out waiting for the node")
        event.wait(0.01)
        waited += 0.01
