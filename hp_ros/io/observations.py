"""Typed observations (:mod:`hp_ros.core.observation`) <-> hp_ros_msgs messages, both ways.

Like :mod:`hp_ros.io.msgs`, builders take the message *class* (rclpy or ``rosbags`` flavour) and
readers are duck-typed; nothing of ROS is imported here.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from hp_ros.core.observation import FingertipObservation, ObjectObservation
from hp_ros.io.msgs import field_class, make_header, matrix_to_pose, pose_to_matrix

__all__ = ["object_observation_to_msg", "object_observation_from_msg", "fingertips_to_msg", "fingertips_from_msg"]

_NO_COVARIANCE = np.zeros(36)


def object_observation_to_msg(obs: ObjectObservation, stamp_ns: int, frame_id: str, msg_cls: type) -> Any:
    """ObjectObservation -> hp_ros_msgs/ObjectObservation of class ``msg_cls``. The pose is sent
    (``has_pose``) only with its covariance: the tracker needs both."""
    x, y, w, h = (int(v) for v in obs.bbox)
    roi_cls, point_cls = field_class(msg_cls, "bbox"), field_class(msg_cls, "center_3d")
    c3 = (0.0, 0.0, 0.0) if obs.center_3d is None else tuple(float(v) for v in obs.center_3d)
    has_pose = obs.pose is not None and obs.pose_covariance is not None
    pose_cls = field_class(msg_cls, "pose")
    return msg_cls(
        header=make_header(field_class(msg_cls, "header"), stamp_ns, frame_id),
        valid=bool(obs.valid), confidence=float(obs.confidence),
        centroid_u=float(obs.centroid_u), centroid_v=float(obs.centroid_v),
        bbox=roi_cls(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False),
        area=int(obs.area), median_depth=float(obs.median_depth),
        has_center_3d=obs.center_3d is not None, center_3d=point_cls(x=c3[0], y=c3[1], z=c3[2]),
        backend=str(obs.backend), has_pose=has_pose,
        pose=matrix_to_pose(obs.pose, pose_cls) if has_pose else pose_cls(),
        pose_covariance=(np.asarray(obs.pose_covariance, dtype=np.float64).reshape(36).copy() if has_pose
                         else _NO_COVARIANCE.copy()),
        pose_confidence=float(obs.pose_confidence) if has_pose else 0.0,
    )


def object_observation_from_msg(msg: Any) -> ObjectObservation:
    """hp_ros_msgs/ObjectObservation -> ObjectObservation. ValueError for a valid observation with a
    non-finite centroid or a pose that is no rigid transform (nothing else is checked)."""
    if msg.valid and not (math.isfinite(msg.centroid_u) and math.isfinite(msg.centroid_v)):
        raise ValueError("object observation with a non-finite centroid")
    b = msg.bbox
    pose = cov = None
    if getattr(msg, "has_pose", False):
        pose = pose_to_matrix(msg.pose)
        cov = np.asarray(msg.pose_covariance, dtype=np.float64).reshape(6, 6).copy()
    c3 = msg.center_3d
    return ObjectObservation(
        valid=bool(msg.valid), confidence=float(msg.confidence), centroid_u=float(msg.centroid_u),
        centroid_v=float(msg.centroid_v), bbox=(int(b.x_offset), int(b.y_offset), int(b.width), int(b.height)),
        area=int(msg.area), median_depth=float(msg.median_depth),
        center_3d=np.array([c3.x, c3.y, c3.z]) if msg.has_center_3d else None, backend=str(msg.backend),
        pose=pose, pose_covariance=cov, pose_confidence=float(msg.pose_confidence) if pose is not None else 0.0)


def fingertips_to_msg(obs: FingertipObservation, stamp_ns: int, frame_id: str, msg_cls: type) -> Any:
    """FingertipObservation -> hp_ros_msgs/FingertipObservations of class ``msg_cls`` (``fk_u``/``fk_v``
    empty without FK projections)."""
    uv = np.asarray(obs.uv, dtype=np.float64).reshape(-1, 2)
    fk = np.zeros((0, 2)) if obs.fk_uv is None else np.asarray(obs.fk_uv, dtype=np.float64).reshape(-1, 2)
    return msg_cls(header=make_header(field_class(msg_cls, "header"), stamp_ns, frame_id),
                   names=[str(n) for n in obs.names], u=[float(v) for v in uv[:, 0]], v=[float(v) for v in uv[:, 1]],
                   confidence=[float(c) for c in obs.confidence],
                   fk_u=[float(v) for v in fk[:, 0]], fk_v=[float(v) for v in fk[:, 1]])


def fingertips_from_msg(msg: Any) -> FingertipObservation:
    """hp_ros_msgs/FingertipObservations -> FingertipObservation; ValueError when the arrays'
    lengths differ."""
    n = len(msg.names)
    if not len(msg.u) == len(msg.v) == len(msg.confidence) == n:
        raise ValueError(f"fingertip observation with {n} names but {len(msg.u)} u, {len(msg.v)} v, "
                         f"{len(msg.confidence)} confidences")
    fk = None
    if len(msg.fk_u) == n and len(msg.fk_v) == n and n:
        fk = np.stack([np.asarray(msg.fk_u, dtype=np.float64), np.asarray(msg.fk_v, dtype=np.float64)], axis=1)
    uv = np.stack([np.asarray(msg.u, dtype=np.float64), np.asarray(msg.v, dtype=np.float64)], axis=1).reshape(n, 2)
    return FingertipObservation(tuple(msg.names), uv, np.asarray(msg.confidence, dtype=np.float64), fk)

