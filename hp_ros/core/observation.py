"""What one camera frame says about the object and the hand, as the tracker consumes it.

Typed, ROS-free records that travel from the segmentation to the EKF (:mod:`hp_ros.io.observations`
converts them to and from ``hp_ros_msgs/ObjectObservation`` and ``FingertipObservations``):

* :class:`ObjectObservation`: the object mask's centre (centroid pixel, median depth, bounding box)
  and, with a depth-fitting backend (``model``), the fitted pose ``T_cam_obj`` ``(4, 4)`` with its
  ``(6, 6)`` covariance (ROS order x, y, z, rx, ry, rz) and its confidence (depth agreement);
* :class:`FingertipObservation`: fingertip pixels by link name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["ObjectObservation", "FingertipObservation"]


@dataclass
class ObjectObservation:
    """What the mask says about the object (field meanings as in hp_ros_msgs/ObjectObservation).

    bbox: ``(x_offset, y_offset, width, height)`` pixels; median_depth metres (NaN without
    depth); center_3d ``(3,)`` camera frame (None without depth). ``pose`` ``(4, 4)``
    ``T_cam_obj`` of a depth fit (None without one), ``pose_covariance`` ``(6, 6)`` (None: the
    fitter gave none), ``pose_confidence`` in [0, 1].
    """

    valid: bool
    confidence: float = 0.0
    centroid_u: float = float("nan")
    centroid_v: float = float("nan")
    bbox: tuple = (0, 0, 0, 0)
    area: int = 0
    median_depth: float = float("nan")
    center_3d: Optional[np.ndarray] = None
    backend: str = ""
    pose: Optional[np.ndarray] = None
    pose_covariance: Optional[np.ndarray] = None
    pose_confidence: float = 0.0

    @property
    def has_pose(self) -> bool:
        return self.pose is not None


@dataclass
class FingertipObservation:
    """Fingertip pixels: ``names`` (F,) fingertip link names, ``uv`` ``(F, 2)`` (NaN rows: not seen),
    ``confidence`` ``(F,)``; ``fk_uv`` ``(F, 2)`` the forward-kinematics projections (or None)."""

    names: tuple
    uv: np.ndarray
    confidence: np.ndarray
    fk_uv: Optional[np.ndarray] = None

    def pixels_for(self, links, min_confidence: float) -> tuple[np.ndarray, list]:
        """``(uv (len(links), 2), unknown names)``: the pixels in the order of ``links``, NaN for a
        fingertip not seen or below ``min_confidence``."""
        uv = np.full((len(links), 2), np.nan)
        unknown = []
        for name, (u, v), c in zip(self.names, np.asarray(self.uv, dtype=np.float64), self.confidence):
            if name not in links:
                unknown.append(name)
            elif c >= min_confidence:
                uv[links.index(name)] = (u, v)
        return uv, unknown
