"""numpy <-> ROS 2 message conversions shared by nodes, bags and tools.

Every builder takes the message *class* (``msg_cls``) to create, so the same function builds
either an rclpy message (``sensor_msgs.msg.Image``) or a ``rosbags`` typestore message
(``get_typestore(Stores.ROS2_JAZZY).types['sensor_msgs/msg/Image']``). Nested classes
(Header, Time, Point, ...) are resolved from the field declarations of ``msg_cls``, so no
ROS import happens here: this module is ROS-free and usable from the core and the bag tools.
Readers are duck-typed and accept messages of either flavour.

Conventions: stamps are int nanoseconds, poses are ``(4, 4)`` numpy arrays ``T_parent_child``
(torch tensors are accepted as input), quaternions in messages are (x, y, z, w), covariances
are ``(6, 6)`` row-major in ROS order (x, y, z, rot_x, rot_y, rot_z).
"""
from __future__ import annotations

import functools
import importlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from transforms3d.quaternions import quat2mat

from hp_ros.io import validate

__all__ = [
    "msg_type_name", "is_rosbags_msg", "field_class",
    "stamp_to_ns", "stamp_to_sec", "ns_to_stamp", "sec_to_ns", "make_header", "header_stamp_ns",
    "IMAGE_ENCODINGS", "image_to_numpy", "numpy_to_image",
    "CameraIntrinsics", "camera_info_to_intrinsics", "make_camera_info",
    "joint_state_to_numpy", "make_joint_state",
    "pose_to_matrix", "matrix_to_pose", "make_pose_stamped", "make_pose_with_covariance_stamped",
    "covariance_from_msg", "make_transform_stamped", "transform_stamped_to_matrix",
    "make_tf_message", "tf_message_to_list",
]

# ----------------------------------------------------------------------------- class plumbing


def is_rosbags_msg(obj_or_cls: Any) -> bool:
    """True for ``rosbags`` typestore messages/classes (dataclasses with ``__msgtype__``)."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return hasattr(cls, "__msgtype__") and hasattr(cls, "__dataclass_fields__")


def _is_rclpy_msg(obj_or_cls: Any) -> bool:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return hasattr(cls, "get_fields_and_field_types")


def msg_type_name(obj_or_cls: Any) -> str:
    """ROS 2 type name ``pkg/msg/Name`` of a message (class) of either flavour."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    if is_rosbags_msg(cls):
        return cls.__msgtype__
    if _is_rclpy_msg(cls):
        return f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"
    raise TypeError(f"{cls!r} is neither an rclpy nor a rosbags message class")


_JAZZY = None


def _jazzy_types() -> dict:
    global _JAZZY
    if _JAZZY is None:
        from rosbags.typesys import Stores, get_typestore
        _JAZZY = get_typestore(Stores.ROS2_JAZZY).types
    return _JAZZY


@functools.lru_cache(maxsize=512)
def field_class(msg_cls: type, name: str) -> type:
    """Class of the nested message field ``name`` of ``msg_cls`` (same flavour as ``msg_cls``;
    cached: message classes do not change, and the look-up ran several times per published pose)."""
    if is_rosbags_msg(msg_cls):
        decl = msg_cls.__dataclass_fields__[name].type  # e.g. 'std_msgs__msg__Header'
        decl = decl if isinstance(decl, str) else decl.__name__
        found = getattr(sys.modules.get(msg_cls.__module__), decl, None)
        if isinstance(found, type):
            return found
        return _jazzy_types()[decl.replace("__", "/")]
    if _is_rclpy_msg(msg_cls):
        decl = msg_cls.get_fields_and_field_types()[name]  # e.g. 'std_msgs/Header'
        pkg, typ = decl.split("/")
        return getattr(importlib.import_module(pkg + ".msg"), typ)
    raise TypeError(f"{msg_cls!r} is neither an rclpy nor a rosbags message class")


def _time_cls(header_cls: type) -> type:
    return field_class(header_cls, "stamp")


# ----------------------------------------------------------------------------- stamps


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or anything with ``sec``/``nanosec``) -> int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return stamp_to_ns(stamp) * 1e-9


def sec_to_ns(seconds: float) -> int:
    """Float seconds -> int nanoseconds (rounded to the nearest ns)."""
    return int(round(float(seconds) * 1e9))


def ns_to_stamp(t_ns: int, time_cls: type) -> Any:
    """int nanoseconds -> ``time_cls(sec, nanosec)``; negative stamps are rejected."""
    t_ns = int(t_ns)
    if t_ns < 0:
        raise ValueError(f"ROS stamps cannot be negative, got {t_ns} ns")
    return time_cls(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)


def make_header(header_cls: type, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header of class ``header_cls``."""
    return header_cls(stamp=ns_to_stamp(stamp_ns, _time_cls(header_cls)), frame_id=str(frame_id))


def header_stamp_ns(msg: Any) -> int:
    """Stamp of a message with a ``header`` in nanoseconds."""
    return stamp_to_ns(msg.header.stamp)


# ----------------------------------------------------------------------------- images

# encoding -> (numpy dtype, channels)
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


def _encoding_info(encoding: str) -> tuple[np.dtype, int]:
    try:
        return IMAGE_ENCODINGS[encoding]
    except KeyError:
        raise ValueError(
            f"unsupported image encoding {encoding!r}; supported: {sorted(IMAGE_ENCODINGS)}"
        ) from None


def image_to_numpy(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> array ``(H, W, C)`` for multi-channel or ``(H, W)`` for one channel.

    The dtype follows the encoding (uint8, uint16 for 16UC1/mono16, float32 for 32FC1), in
    native byte order. Row padding (``step`` > ``W * C * itemsize``) is removed. The result is
    a fresh array (no aliasing of message memory).
    """
    dtype, channels = _encoding_info(msg.encoding)
    w, h = validate.check_image_size(msg.width, msg.height)  # before anything is allocated
    step = int(msg.step)
    row = w * channels * dtype.itemsize
    if step < row or step > 4 * row + 4096:
        raise ValueError(f"image step {step} is smaller than width*channels*itemsize = {row}")
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buf.size != step * h:
        raise ValueError(f"image data has {buf.size} bytes, expected step*height = {step * h}")
    rows = buf.reshape(h, step)[:, :row]
    order = ">" if msg.is_bigendian else "<"
    arr = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).astype(dtype, copy=True)
    return arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)


def serialized_header_stamp_ns(data: bytes) -> int:
    """Header stamp [ns] of a CDR-serialised message whose first field is ``std_msgs/Header``
    (sensor_msgs/Image, CameraInfo, ...), read without deserialising the message: 4 bytes of
    encapsulation (CDR little or big endian), then ``stamp.sec`` (int32), ``stamp.nanosec`` (uint32)."""
    import struct

    data = bytes(data[:12])
    if len(data) < 12 or data[0] != 0 or data[1] not in (0, 1):
        raise ValueError("not a CDR-serialised message with a header")
    sec, nsec = struct.unpack_from("<iI" if data[1] == 1 else ">iI", data, 4)
    return sec * 1_000_000_000 + nsec


from hp_ros.io.image_header import ImageHeader, check_image_header, serialized_image_header  # noqa: E402,F401


def numpy_to_image(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str, msg_cls: type) -> Any:
    """Array -> sensor_msgs/Image of class ``msg_cls`` (little-endian, no row padding).

    Args:
        arr: ``(H, W, C)`` or ``(H, W)`` with the channel count and dtype of ``encoding``
            (uint8 for rgb8/bgr8/rgba8/bgra8/mono8, uint16 for 16UC1/mono16, float32 for 32FC1).
    """
    dtype, channels = _encoding_info(encoding)
    arr = np.asarray(arr)
    if arr.ndim == 3 and channels == 1 and arr.shape[2] == 1:
        arr = arr[..., 0]
    want = 2 if channels == 1 else 3
    if arr.ndim != want or (channels > 1 and arr.shape[2] != channels):
        raise ValueError(
            f"encoding {encoding!r} needs an array of shape "
            f"{'(H, W)' if channels == 1 else f'(H, W, {channels})'}, got {arr.shape}"
        )
    if arr.dtype != dtype:
        raise ValueError(f"encoding {encoding!r} needs dtype {dtype}, got {arr.dtype}")
    h, w = arr.shape[:2]
    data = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<")).view(np.uint8).reshape(-1)
    header = make_header(field_class(msg_cls, "header"), stamp_ns, frame_id)
    return msg_cls(
        header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
        step=w * channels * dtype.itemsize,
        data=data if is_rosbags_msg(msg_cls) else data.tobytes(),
    )


# ----------------------------------------------------------------------------- camera info


@dataclass
class CameraIntrinsics:
    """A sensor_msgs/CameraInfo as numpy arrays. ``K``, ``width``, ``height``: the *published
    image's* intrinsics and size by the project's one CameraInfo rule (P before K, binning, ROI:
    :func:`hp_ros.core.camera_info.image_intrinsics`); ``D``, ``P`` as in the message;
    ``distorted``: K was used and D is non-zero (hp_ros projects with a pinhole model)."""

    K: np.ndarray  # (3, 3)
    width: int
    height: int
    D: np.ndarray = field(default_factory=lambda: np.zeros(5))  # (n,)
    P: np.ndarray | None = None  # (3, 4)
    frame_id: str = ""
    distortion_model: str = "plumb_bob"
    stamp_ns: int = 0
    distorted: bool = False


def camera_info_to_intrinsics(msg: Any, frame_id: str | None = None) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo -> :class:`CameraIntrinsics`, validated first
    (:func:`hp_ros.io.validate.check_camera_info`; ``frame_id``: the frame it must be in, None = any):
    :class:`~hp_ros.io.validate.InvalidMessage` (a ValueError) for a message that must not be used."""
    from hp_ros.core.camera_info import image_intrinsics

    validate.check_camera_info(msg, frame_id)
    ii = image_intrinsics(msg)
    return CameraIntrinsics(
        K=ii.K, width=ii.width, height=ii.height,
        D=np.asarray(msg.d, dtype=np.float64).copy(),
        P=np.asarray(msg.p, dtype=np.float64).reshape(3, 4),
        frame_id=msg.header.frame_id, distortion_model=msg.distortion_model,
        stamp_ns=header_stamp_ns(msg), distorted=ii.distorted,
    )


def make_camera_info(
    K: np.ndarray, width: int, height: int, msg_cls: type, *, D: np.ndarray | None = None,
    P: np.ndarray | None = None, frame_id: str = "camera_color_optical_frame", stamp_ns: int = 0,
    distortion_model: str = "plumb_bob",
) -> Any:
    """Intrinsics -> sensor_msgs/CameraInfo of class ``msg_cls``.

    ``K`` is ``(3, 3)``; ``D`` defaults to five zeros (plumb_bob); ``P`` defaults to ``[K | 0]``;
    ``R`` is identity (monocular).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be (3, 3), got {K.shape}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    D = np.zeros(5) if D is None else np.asarray(D, dtype=np.float64).reshape(-1)
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else np.asarray(P, dtype=np.float64)
    if P.shape != (3, 4):
        raise ValueError(f"P must be (3, 4), got {P.shape}")
    roi_cls = field_class(msg_cls, "roi")
    roi = roi_cls(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return msg_cls(
        header=make_header(field_class(msg_cls, "header"), stamp_ns, frame_id),
        height=int(height), width=int(width), distortion_model=distortion_model,
        d=D.copy(), k=K.reshape(-1).copy(), r=np.eye(3).reshape(-1), p=P.reshape(-1).copy(),
        binning_x=0, binning_y=0, roi=roi,
    )


# ----------------------------------------------------------------------------- joint states


def joint_state_to_numpy(msg: Any) -> tuple[list[str], np.ndarray, int]:
    """sensor_msgs/JointState -> (names, positions ``(J,)`` float64, stamp ns)."""
    names = [str(n) for n in msg.name]
    pos = np.asarray(msg.position, dtype=np.float64).copy().reshape(-1)
    validate.check_joint_state(names, pos)
    return names, pos, header_stamp_ns(msg)


def make_joint_state(
    names: Sequence[str], positions: np.ndarray, stamp_ns: int, msg_cls: type, *,
    velocities: np.ndarray | None = None, efforts: np.ndarray | None = None, frame_id: str = "",
) -> Any:
    """(names, positions ``(J,)``) -> sensor_msgs/JointState of class ``msg_cls``."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    if len(names) != pos.shape[0]:
        raise ValueError(f"{len(names)} joint names but {pos.shape[0]} positions")
    vel = np.zeros(0) if velocities is None else np.asarray(velocities, np.float64).reshape(-1)
    eff = np.zeros(0) if efforts is None else np.asarray(efforts, np.float64).reshape(-1)
    for label, arr in (("velocities", vel), ("efforts", eff)):
        if arr.size not in (0, pos.size):
            raise ValueError(f"{label} must be empty or have {pos.size} entries, got {arr.size}")
    return msg_cls(
        header=make_header(field_class(msg_cls, "header"), stamp_ns, frame_id),
        name=[str(n) for n in names], position=pos, velocity=vel, effort=eff,
    )


# ----------------------------------------------------------------------------- poses


def _as_pose_array(T: Any) -> np.ndarray:
    if hasattr(T, "detach"):
        T = T.detach().cpu().numpy()
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"pose must be a (4, 4) matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.abs(R @ R.T - _EYE3).max() <= 1e-3 or np.linalg.det(R) < 0:   # also NaN
        raise ValueError("pose rotation block is not a proper rotation matrix")
    return T


def pose_to_matrix(msg: Any) -> np.ndarray:
    """Pose-like message -> ``(4, 4)`` float64.

    Accepts geometry_msgs Pose, PoseStamped, PoseWithCovariance, PoseWithCovarianceStamped,
    Transform and TransformStamped (duck-typed by their fields).
    """
    while hasattr(msg, "pose") or hasattr(msg, "transform"):
        msg = msg.pose if hasattr(msg, "pose") else msg.transform
    if hasattr(msg, "position"):
        p, q = msg.position, msg.orientation
    elif hasattr(msg, "translation"):
        p, q = msg.translation, msg.rotation
    else:
        raise TypeError(f"{type(msg).__name__} is not a pose or transform message")
    quat = validate.unit_quaternion(q.x, q.y, q.z, q.w)  # finite, normalisable
    T = np.eye(4)
    T[:3, :3] = quat2mat((quat[3], quat[0], quat[1], quat[2]))   # transforms3d: (w, x, y, z); 6x scipy's speed
    T[:3, 3] = validate.check_translation(p.x, p.y, p.z)
    return T


_EYE3 = np.eye(3)


def _quat_xyzw(T: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of the rotation block of ``T`` (Shepperd's method:
    from the largest of the four diagonal combinations, so no division by a small number; for a
    slightly non-orthogonal block the result is normalised). Plain floats: scipy's Rotation cost
    ~40 us per published pose."""
    (a, b, c), (d, e, f), (g, h, i) = T[:3, :3].tolist()
    tr = a + e + i
    if tr >= a and tr >= e and tr >= i:
        s = 2.0 * math.sqrt(max(1.0 + tr, 1e-300))
        q = ((h - f) / s, (c - g) / s, (d - b) / s, 0.25 * s)
    elif a >= e and a >= i:
        s = 2.0 * math.sqrt(max(1.0 + a - e - i, 1e-300))
        q = (0.25 * s, (b + d) / s, (c + g) / s, (h - f) / s)
    elif e >= i:
        s = 2.0 * math.sqrt(max(1.0 + e - a - i, 1e-300))
        q = ((b + d) / s, 0.25 * s, (f + h) / s, (c - g) / s)
    else:
        s = 2.0 * math.sqrt(max(1.0 + i - a - e, 1e-300))
        q = ((c + g) / s, (f + h) / s, 0.25 * s, (d - b) / s)
    n = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    sign = -1.0 if q[3] < 0 else 1.0
    return np.array([sign * q[0] / n, sign * q[1] / n, sign * q[2] / n, sign * q[3] / n])


def matrix_to_pose(T: Any, msg_cls: type) -> Any:
    """``(4, 4)`` -> geometry_msgs/Pose (or Transform, by its fields) of class ``msg_cls``."""
    T = _as_pose_array(T)
    q = _quat_xyzw(T)
    fields = getattr(msg_cls, "__dataclass_fields__", None) or msg_cls.get_fields_and_field_types()
    if "translation" in fields:
        v_cls, q_cls = field_class(msg_cls, "translation"), field_class(msg_cls, "rotation")
        return msg_cls(
            translation=v_cls(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=q_cls(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
        )
    p_cls, q_cls = field_class(msg_cls, "position"), field_class(msg_cls, "orientation")
    return msg_cls(
        position=p_cls(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        orientation=q_cls(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def make_pose_stamped(T: Any, stamp_ns: int, frame_id: str, msg_cls: type) -> Any:
    """``(4, 4)`` T_frame_object -> geometry_msgs/PoseStamped of class ``msg_cls``."""
    return msg_cls(
        header=make_header(field_class(msg_cls, "header"), stamp_ns, frame_id),
        pose=matrix_to_pose(T, field_class(msg_cls, "pose")),
    )


def make_pose_with_covariance_stamped(
    T: Any, covariance: np.ndarray, stamp_ns: int, frame_id: str, msg_cls: type,
) -> Any:
    """Pose + ``(6, 6)`` covariance (x, y, z, rot_x, rot_y, rot_z) -> PoseWithCovarianceStamped."""
    cov = np.asarray(covariance.detach().cpu() if hasattr(covariance, "detach") else covariance,
                     dtype=np.float64)
    if cov.shape != (6, 6):
        raise ValueError(f"covariance must be (6, 6), got {cov.shape}")
    if not np.abs(cov - cov.T).max() <= 1e-9 + 1e-6 * np.abs(cov).max():   # also NaN
        raise ValueError("covariance must be symmetric")
    pwc_cls = field_class(msg_cls, "pose")
    pwc = pwc_cls(pose=matrix_to_pose(T, field_class(pwc_cls, "pose")), covariance=cov.reshape(-1).copy())
    return msg_cls(header=make_header(field_class(msg_cls, "header"), stamp_ns, frame_id), pose=pwc)


def covariance_from_msg(msg: Any) -> np.ndarray:
    """PoseWithCovariance(Stamped) -> ``(6, 6)`` covariance (row-major in the message)."""
    while not hasattr(msg, "covariance"):
        msg = msg.pose
    return np.asarray(msg.covariance, dtype=np.float64).reshape(6, 6).copy()


def make_transform_stamped(T: Any, stamp_ns: int, parent: str, child: str, msg_cls: type) -> Any:
    """``(4, 4)`` T_parent_child -> geometry_msgs/TransformStamped of class ``msg_cls``."""
    return msg_cls(
        header=make_header(field_class(msg_cls, "header"), stamp_ns, parent),
        child_frame_id=str(child),
        transform=matrix_to_pose(T, field_class(msg_cls, "transform")),
    )


def transform_stamped_to_matrix(msg: Any) -> tuple[np.ndarray, str, str, int]:
    """TransformStamped -> (T_parent_child ``(4, 4)``, parent, child, stamp ns)."""
    return pose_to_matrix(msg.transform), msg.header.frame_id, msg.child_frame_id, header_stamp_ns(msg)


def make_tf_message(transforms: Sequence[Any], msg_cls: type) -> Any:
    """List of TransformStamped -> tf2_msgs/TFMessage of class ``msg_cls``."""
    return msg_cls(transforms=list(transforms))


def tf_message_to_list(msg: Any) -> list[tuple[np.ndarray, str, str, int]]:
    """tf2_msgs/TFMessage -> list of (T_parent_child, parent, child, stamp ns)."""
    return [transform_stamped_to_matrix(t) for t in msg.transforms]
