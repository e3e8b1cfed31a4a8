"""Validation of incoming messages at the door: one checker per message type.

Every node turns a message into arrays through :mod:`hp_ros.io.msgs`, and those conversions call
the checkers here first, so a malformed message is refused before it can reach any state or
allocate anything. A refusal is an :class:`InvalidMessage` (a ``ValueError``) whose ``kind`` is
one of a small, fixed set of names (the key the node counts it under in ``/diagnostics``) and
whose ``value`` is the offending value when it is worth reporting (an unknown encoding, a
distortion model), so an endless variety of bad values never makes an endless set of keys.

ROS-free and duck-typed: rclpy messages and ``rosbags`` messages alike.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

# largest accepted image side [px], checked before anything is allocated for an image
MAX_IMAGE_SIDE = 8192
# distortion models of sensor_msgs/distortion_models.hpp (and "" for none): model -> allowed len(D)
DISTORTION_MODELS = {"plumb_bob": (0, 5), "rational_polynomial": (0, 8, 12, 14), "equidistant": (0, 4),
                     "": (0,)}
# focal lengths [px] accepted relative to the image side: a field of view between ~0.6 and ~179 deg
FOCAL_MIN_PER_PX, FOCAL_MAX_PER_PX = 0.005, 100.0
# largest accepted translation [m] in a pose or transform (a lab, not the solar system)
MAX_TRANSLATION = 1.0e3


class InvalidMessage(ValueError):
    """A message refused at the door: ``kind`` (a fixed key), the text, and the offending value."""

    def __init__(self, kind: str, text: str, value: Any = None):
        super().__init__(text)
        self.kind = kind
        self.value = value


def _finite(values) -> bool:
    a = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.isfinite(a)))


def _as_floats(values, kind: str, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InvalidMessage(kind, f"{what} is not a list of numbers: {e}") from None


# ----------------------------------------------------------------------------- stamps

def check_stamp(stamp: Any, kind: str = "stamp") -> int:
    """builtin_interfaces/Time -> int ns; refuses zero (an unset header) and negative stamps."""
    sec, nsec = int(stamp.sec), int(stamp.nanosec)
    if not 0 <= nsec < 1_000_000_000:
        raise InvalidMessage(f"{kind}_invalid", f"stamp nanosec {nsec} outside [0, 1e9)")
    t = sec * 1_000_000_000 + nsec
    if t == 0:
        raise InvalidMessage(f"{kind}_zero", "stamp is zero (header not set)")
    if t < 0:
        raise InvalidMessage(f"{kind}_negative", f"stamp is negative ({sec} s)")
    return t


# ----------------------------------------------------------------------------- poses

def unit_quaternion(x: float, y: float, z: float, w: float, kind: str = "pose") -> np.ndarray:
    """(x, y, z, w) -> unit quaternion ``(4,)``; refuses non-finite and zero-norm quaternions."""
    q = np.array([x, y, z, w], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise InvalidMessage(f"{kind}_quaternion", f"quaternion is not finite: {q.tolist()}")
    n = float(np.linalg.norm(q)) if float(np.abs(q).max()) < 1e6 else math.inf  # no overflow warning
    if not 1e-6 < n < 1e6:
        raise InvalidMessage(f"{kind}_quaternion", f"quaternion cannot be normalised (norm {n:.3g})")
    return q / n


def check_translation(x: float, y: float, z: float, kind: str = "pose") -> np.ndarray:
    """(x, y, z) -> ``(3,)``; refuses non-finite values and translations beyond ``MAX_TRANSLATION``."""
    t = np.array([x, y, z], dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise InvalidMessage(f"{kind}_translation", f"translation is not finite: {t.tolist()}")
    if float(np.abs(t).max()) > MAX_TRANSLATION:
        raise InvalidMessage(f"{kind}_translation", f"translation {t.tolist()} m is beyond {MAX_TRANSLATION:g} m")
    return t


def check_covariance(values: Sequence[float], kind: str = "pose") -> np.ndarray:
    """36 numbers -> ``(6, 6)``; refuses non-finite, asymmetric or negative-diagonal covariances."""
    c = _as_floats(values, f"{kind}_covariance", "covariance")
    if c.size != 36 or not np.all(np.isfinite(c)):
        raise InvalidMessage(f"{kind}_covariance", "covariance must be 36 finite numbers")
    c = c.reshape(6, 6)
    if np.any(np.diag(c) < 0) or not np.allclose(c, c.T, atol=1e-9 + 1e-6 * float(np.abs(c).max())):
        raise InvalidMessage(f"{kind}_covariance", "covariance is not symmetric with a non-negative diagonal")
    return c


# ----------------------------------------------------------------------------- camera info

def check_image_size(width: Any, height: Any, kind: str = "image") -> tuple[int, int]:
    """``(width, height)`` as ints in ``[1, MAX_IMAGE_SIDE]`` (checked before any allocation)."""
    w, h = int(width), int(height)
    if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
        raise InvalidMessage(f"{kind}_size", f"image size {w}x{h} outside 1..{MAX_IMAGE_SIDE} px")
    return w, h


def check_camera_info(msg: Any, frame_id: Optional[str] = None) -> np.ndarray:
    """Validate a sensor_msgs/CameraInfo; return the full-resolution intrinsics ``(3, 3)`` float64
    (P's left 3x3 when P is set, else K - the rule of :mod:`hp_ros.core.camera_info`).

    Checks: size within ``MAX_IMAGE_SIDE``; K and P finite, not all zero; that matrix with ``[2] = (0, 0, 1)``, no skew beyond
    ``fx``, fx and fy positive and within ``[FOCAL_MIN_PER_PX, FOCAL_MAX_PER_PX] x`` the image
    side, the principal point inside the image; D finite with a known distortion model and a
    length it allows; P and R finite; the frame the node expects (``frame_id``, when given).
    """
    w, h = check_image_size(msg.width, msg.height, "camera_info")
    K = _as_floats(msg.k, "camera_info_k", "K")
    if K.size != 9 or not np.all(np.isfinite(K)):
        raise InvalidMessage("camera_info_k", f"K is not 9 finite numbers: {K.tolist()}")
    P = _as_floats(getattr(msg, "p", np.zeros(12)), "camera_info_k", "P")
    if P.size != 12 or not np.all(np.isfinite(P)):
        raise InvalidMessage("camera_info_k", "P is not 12 finite numbers")
    # the matrix the one CameraInfo rule uses (hp_ros.core.camera_info): P's left 3x3 when P is set
    K = P.reshape(3, 4)[:, :3].copy() if np.any(P) else K.reshape(3, 3)
    if not np.any(K):
        raise InvalidMessage("camera_info_k", "K and P are all zeros: the camera is uncalibrated")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    side = max(w, h)
    if abs(K[2, 2] - 1.0) > 1e-6 or K[2, 0] != 0 or K[2, 1] != 0 or K[1, 0] != 0:
        raise InvalidMessage("camera_info_k", f"K's last row must be (0, 0, 1) and K[1,0] zero: {K.ravel().tolist()}")
    if not (FOCAL_MIN_PER_PX * side <= fx <= FOCAL_MAX_PER_PX * side
            and FOCAL_MIN_PER_PX * side <= fy <= FOCAL_MAX_PER_PX * side):
        raise InvalidMessage("camera_info_k", f"focal lengths fx={fx:g}, fy={fy:g} px implausible for a "
                             f"{w}x{h} image (uncalibrated camera?)")
    if not (0.0 <= cx <= w and 0.0 <= cy <= h) or abs(K[0, 1]) > fx:
        raise InvalidMessage("camera_info_k", f"principal point ({cx:g}, {cy:g}) outside the {w}x{h} image "
                             "or skew larger than fx")
    model = str(msg.distortion_model)
    D = _as_floats(msg.d, "camera_info_distortion", "D")
    if model not in DISTORTION_MODELS:
        raise InvalidMessage("camera_info_distortion", f"unknown distortion model {model[:40]!r}; known: "
                             f"{sorted(m for m in DISTORTION_MODELS if m)}", value=model[:40])
    if not np.all(np.isfinite(D)) or (D.size not in DISTORTION_MODELS[model]
                                      and not (model == "" and not np.any(D))):
        raise InvalidMessage("camera_info_distortion", f"D ({D.size} values) is not finite or has a length "
                             f"{model or 'no model'!r} does not allow: {D.tolist()[:14]}")
    r = getattr(msg, "r", None)
    if r is not None and not _finite(_as_floats(r, "camera_info_k", "R")):
        raise InvalidMessage("camera_info_k", "R is not finite")
    check_frame(msg.header.frame_id, frame_id, "camera_info")
    return K


def check_frame(got: str, expected: Optional[str], kind: str) -> None:
    """The message's ``frame_id`` is the one the node works in (``expected`` None: any frame)."""
    if expected is not None and got != expected:
        raise InvalidMessage(f"{kind}_frame", f"frame_id {str(got)[:60]!r} is not the camera frame {expected!r} "
                             "(set the camera_frame parameter if the camera's frame is another)", value=str(got)[:60])


# ----------------------------------------------------------------------------- joint states

def check_joint_state(names: Sequence[str], positions: np.ndarray) -> None:
    """Names and positions of one JointState: as many of each, finite positions (names: the
    hand's ``JointStateMapper`` knows which it accepts)."""
    if len(names) != positions.shape[0]:
        raise InvalidMessage("joint_states_length", f"JointState has {len(names)} names but "
                             f"{positions.shape[0]} positions")
    if not np.all(np.isfinite(positions)):
        raise InvalidMessage("joint_states_nan", "JointState has non-finite positions")


# ----------------------------------------------------------------------------- observations

def check_object_observation(msg: Any) -> None:
    """hp_ros_msgs/ObjectObservation: finite numbers where it says it is valid / has a pose."""
    if not math.isfinite(msg.confidence):
        raise InvalidMessage("object_observation", "object observation with a non-finite confidence")
    if msg.valid and not _finite([msg.centroid_u, msg.centroid_v, msg.median_depth]):
        raise InvalidMessage("object_observation", "object observation with a non-finite centroid or depth")
    if getattr(msg, "has_pose", False):
        p, o = msg.pose.position, msg.pose.orientation
        check_translation(p.x, p.y, p.z, "object_observation")
        unit_quaternion(o.x, o.y, o.z, o.w, "object_observation")
        check_covariance(msg.pose_covariance, "object_observation")
        if not math.isfinite(msg.pose_confidence):
            raise InvalidMessage("object_observation", "depth fit with a non-finite confidence")


def check_fingertips(msg: Any) -> None:
    """hp_ros_msgs/FingertipObservations: one u, v, confidence per name (at most 64), finite
    confidences (a tip not found has NaN u, v: the tracker skips it)."""
    n = len(msg.names)
    if not (len(msg.u) == len(msg.v) == len(msg.confidence) == n) or n > 64:
        raise InvalidMessage("fingertips", "fingertip observation arrays of different lengths")
    if not _finite(list(msg.confidence)):
        raise InvalidMessage("fingertips", "fingertip observation with non-finite confidences")
