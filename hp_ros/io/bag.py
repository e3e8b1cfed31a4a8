"""rosbag2 reading and writing through the pure-Python ``rosbags`` package (no ROS install).

Bags use the real ROS 2 Jazzy message definitions (``rosbags`` typestore ``ROS2_JAZZY``) and
rosbag2 format version 9, so ``ros2 bag info/play`` on a real install reads them. Storage is
MCAP by default, sqlite3 on request.

Topic conventions for hp_ros bags (driver defaults from docs/DESIGN plus ground truth):

* ``/camera/camera/color/image_raw`` (sensor_msgs/Image rgb8) + ``.../color/camera_info``
* ``/camera/camera/aligned_depth_to_color/image_raw`` (16UC1, millimetres) + ``.../camera_info``
* ``/joint_states`` (sensor_msgs/JointState), ``/tf_static`` (tf2_msgs/TFMessage)
* ground truth, standard types only so no custom package is needed to read it:
  ``/hp_ros/ground_truth/object_pose`` (geometry_msgs/PoseStamped, object pose in the colour
  optical frame), ``/hp_ros/ground_truth/object_mask`` and ``/hp_ros/ground_truth/hand_mask``
  (sensor_msgs/Image mono8, 255 inside, 0 outside, same stamp as the colour image).

Custom message definitions (e.g. hp_ros_msgs) can be registered with ``extra_msgs``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

__all__ = [
    "TOPIC_COLOR_IMAGE", "TOPIC_COLOR_INFO", "TOPIC_DEPTH_IMAGE", "TOPIC_DEPTH_INFO",
    "TOPIC_JOINT_STATES", "TOPIC_TF_STATIC", "TOPIC_TF", "TOPIC_GT_OBJECT_POSE", "TOPIC_GT_OBJECT_MASK",
    "TOPIC_GT_HAND_MASK", "STORAGES", "BagError", "make_typestore", "msg_class", "BagWriter",
    "read_bag", "BagSummary", "bag_summary",
]

TOPIC_COLOR_IMAGE = "/camera/camera/color/image_raw"
TOPIC_COLOR_INFO = "/camera/camera/color/camera_info"
TOPIC_DEPTH_IMAGE = "/camera/camera/aligned_depth_to_color/image_raw"
TOPIC_DEPTH_INFO = "/camera/camera/aligned_depth_to_color/camera_info"
TOPIC_JOINT_STATES = "/joint_states"
TOPIC_TF_STATIC = "/tf_static"
TOPIC_TF = "/tf"
TOPIC_GT_OBJECT_POSE = "/hp_ros/ground_truth/object_pose"
TOPIC_GT_OBJECT_MASK = "/hp_ros/ground_truth/object_mask"
TOPIC_GT_HAND_MASK = "/hp_ros/ground_truth/hand_mask"

STORAGES = ("mcap", "sqlite3")


class BagError(RuntimeError):
    """A bag cannot be written or read (message says why)."""


def make_typestore(extra_msgs: Mapping[str, str] | None = None):
    """A fresh ROS 2 Jazzy ``rosbags`` typestore, plus ``extra_msgs`` {``pkg/msg/Name``: .msg text}."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    if extra_msgs:
        types: dict = {}
        for name, text in extra_msgs.items():
            if "/msg/" not in name:
                raise ValueError(f"message type names look like 'pkg/msg/Name', got {name!r}")
            types.update(get_types_from_msg(text, name))
        store.register(types)
    return store


_DEFAULT_STORE = None


def msg_class(typename: str, typestore=None) -> type:
    """``rosbags`` message class for ``pkg/msg/Name`` (Jazzy store unless one is given)."""
    global _DEFAULT_STORE
    if typestore is None:
        if _DEFAULT_STORE is None:
            _DEFAULT_STORE = make_typestore()
        typestore = _DEFAULT_STORE
    try:
        return typestore.types[typename]
    except KeyError:
        raise ValueError(f"unknown message type {typename!r} (register it with extra_msgs)") from None


class BagWriter:
    """Write a rosbag2 bag; use as a context manager.

    Example::

        with BagWriter("out_bag", storage="mcap") as bag:
            Image = bag.msg_class("sensor_msgs/msg/Image")
            bag.write("/camera/camera/color/image_raw", "sensor_msgs/msg/Image", msg, t_ns)

    ``msg`` may be a ``rosbags`` message, an rclpy message (serialised with rclpy) or raw CDR
    ``bytes``. Connections are created on first use of a topic; a topic keeps its type.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", *,
                 extra_msgs: Mapping[str, str] | None = None, qos: Mapping[str, Any] | None = None):
        """
        Args:
            path: bag directory to create (must not exist).
            storage: ``"mcap"`` (default) or ``"sqlite3"``.
            extra_msgs: extra message definitions {``pkg/msg/Name``: .msg text}.
            qos: optional {topic: list of ``rosbags.rosbag2.metadata`` Qos} offered profiles.
        """
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise ValueError(f"unknown bag storage {storage!r}; choose one of {STORAGES}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; bags are never overwritten")
        self.storage = storage
        self.typestore = make_typestore(extra_msgs)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._qos = dict(qos or {})
        self._connections: dict[str, Any] = {}
        self._open = False

    def msg_class(self, typename: str) -> type:
        """``rosbags`` class of ``pkg/msg/Name`` in this writer's typestore."""
        return msg_class(typename, self.typestore)

    def open(self) -> "BagWriter":
        self._writer.open()
        self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _connection(self, topic: str, msg_type: str):
        conn = self._connections.get(topic)
        if conn is None:
            if msg_type not in self.typestore.types:
                raise ValueError(f"unknown message type {msg_type!r} (register it with extra_msgs)")
            conn = self._writer.add_connection(
                topic, msg_type, typestore=self.typestore,
                offered_qos_profiles=self._qos.get(topic, ()),
            )
            self._connections[topic] = conn
        elif conn.msgtype != msg_type:
            raise ValueError(f"topic {topic!r} already has type {conn.msgtype}, not {msg_type}")
        return conn

    def write(self, topic: str, msg_type: str, msg: Any, t_ns: int) -> None:
        """Append one message on ``topic`` with receive time ``t_ns`` (int ns)."""
        if not self._open:
            raise BagError("BagWriter is not open; use it as a context manager")
        conn = self._connection(topic, msg_type)
        if isinstance(msg, (bytes, bytearray, memoryview)):
            data = bytes(msg)
        elif hasattr(type(msg), "__msgtype__"):
            if msg.__msgtype__ != msg_type:
                raise ValueError(f"message is a {msg.__msgtype__}, not a {msg_type}")
            data = self.typestore.serialize_cdr(msg, msg_type)
        elif hasattr(type(msg), "get_fields_and_field_types"):
            from rclpy.serialization import serialize_message
            data = serialize_message(msg)
        else:
            raise TypeError(f"cannot serialise a {type(msg).__name__} for topic {topic!r}")
        self._writer.write(conn, int(t_ns), data)


def _open_reader(path: str | Path, typestore=None):
    from rosbags.highlevel import AnyReader, AnyReaderError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    try:
        return AnyReader([path], default_typestore=typestore or make_typestore())
    except AnyReaderError as err:
        raise BagError(f"cannot open bag {path}: {err}") from None


def read_bag(path: str | Path, topics: Iterable[str] | None = None, *, raw: bool = False,
             start_ns: int | None = None, stop_ns: int | None = None,
             typestore=None) -> Iterator[tuple[str, str, int, Any]]:
    """Iterate ``(topic, msgtype, t_ns, msg)`` in receive-time order.

    Args:
        path: bag directory (or a single .mcap / .db3 file).
        topics: only these topics (all when None). Unknown names raise ``BagError``.
        raw: yield the serialised CDR ``bytes`` instead of a deserialised ``rosbags`` message.
        start_ns, stop_ns: receive-time window [start, stop).
    """
    reader = _open_reader(path, typestore)
    with reader:
        conns = reader.connections
        if topics is not None:
            wanted = set(topics)
            missing = wanted - {c.topic for c in conns}
            if missing:
                raise BagError(
                    f"topic(s) {sorted(missing)} not in bag {path}; it has {sorted({c.topic for c in conns})}"
                )
            conns = [c for c in conns if c.topic in wanted]
        if not conns:
            return
        for conn, t_ns, data in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            msg = bytes(data) if raw else reader.deserialize(data, conn.msgtype)
            yield conn.topic, conn.msgtype, int(t_ns), msg


@dataclass
class BagSummary:
    """What is in a bag: per-topic types and counts, time span."""

    path: Path
    storage: str
    topics: dict[str, str] = field(default_factory=dict)  # topic -> msgtype
    counts: dict[str, int] = field(default_factory=dict)  # topic -> messages
    start_ns: int = 0
    end_ns: int = 0

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    @property
    def message_count(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        lines = [f"{self.path} ({self.storage}, {self.duration_s:.3f} s, {self.message_count} messages)"]
        for topic in sorted(self.topics):
            lines.append(f"  {topic}  [{self.topics[topic]}]  {self.counts.get(topic, 0)}")
        return "\n".join(lines)


def bag_summary(path: str | Path) -> BagSummary:
    """Read the bag's metadata (no message deserialisation)."""
    reader = _open_reader(path)
    with reader:
        counts: Counter = Counter()
        types = {}
        for c in reader.connections:
            types[c.topic] = c.msgtype
            counts[c.topic] += c.msgcount
        p = Path(path)
        files = [p] if p.is_file() else list(p.iterdir())
        storage = "mcap" if any(f.suffix == ".mcap" for f in files) else "sqlite3"
        empty = reader.message_count == 0
        return BagSummary(path=p, storage=storage, topics=types, counts=dict(counts),
                          start_ns=0 if empty else reader.start_time,
                          end_ns=0 if empty else reader.end_time)
