"""The filter's state: the layout of the error state and the nominal state ``x`` with its ``⊞``.

Nominal state ``x`` (:class:`Estimate`): ``T_hand_obj`` ``(4, 4)``, ``T_cam_hand`` ``(4, 4)``, the
centre-observation bias ``(3,)`` (u, v [px], depth [m]) and the depth-fit pose bias ``(6,)``.
Error state ``dx`` ``(n,)`` (:class:`StateLayout`), in the apply_delta convention for both poses::

    [ xi_hand_obj (6) | xi_cam_hand (6, when the calibration is estimated)
      | centre bias (3, when on) | depth-fit bias (6, when on) ]

``x ⊞ dx`` moves the poses by :func:`~hp_ros.core.ekf.geometry.apply_delta_np` and adds to the
biases; the filter equations (:mod:`hp_ros.core.ekf.filter`) only ever see ``dx``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hp_ros.core.ekf.geometry import apply_delta_np

__all__ = ["StateLayout", "Estimate"]


class StateLayout:
    """Indices of the blocks of the error state (which blocks exist is fixed at construction).

    ``n_pose``: 12 (object + calibration) or 6; ``cb`` / ``db``: slices of the centre bias and the
    depth-fit bias (empty when off); ``n``: total size; ``rotation_idx``: the rotation components
    of the pose blocks (what a Schmidt centre update freezes).
    """

    def __init__(self, calibration: bool, center_bias: bool, depth_bias: bool):
        self.calibration, self.center_bias, self.depth_bias = bool(calibration), bool(center_bias), bool(depth_bias)
        self.n_pose = 12 if self.calibration else 6
        self.cb = slice(self.n_pose, self.n_pose + (3 if self.center_bias else 0))
        self.db = slice(self.cb.stop, self.cb.stop + (6 if self.depth_bias else 0))
        self.n = self.db.stop
        self.rotation_idx = np.array([3, 4, 5] + ([9, 10, 11] if self.calibration else []))


@dataclass
class Estimate:
    """Nominal state ``x`` (arrays are not copied: treat them as read-only)."""

    T_ho: np.ndarray           # (4, 4) object in the hand base frame
    T_ch: np.ndarray           # (4, 4) camera -> hand (estimated, or the published one)
    center_bias: np.ndarray    # (3,) u, v [px], depth [m]
    depth_bias: np.ndarray     # (6,) apply_delta error of the depth fit, camera frame
    layout: StateLayout

    @property
    def T_cam_obj(self) -> np.ndarray:
        """``(4, 4)`` object in the camera."""
        return self.T_ch @ self.T_ho

    def boxplus(self, dx: np.ndarray) -> "Estimate":
        """``x ⊞ dx`` for an error-state vector ``dx`` ``(n,)``: blocks that do not exist stay as they are."""
        lay = self.layout
        return Estimate(apply_delta_np(self.T_ho, dx[:6]),
                        apply_delta_np(self.T_ch, dx[6:12]) if lay.calibration else self.T_ch,
                        self.center_bias + dx[lay.cb] if lay.center_bias else self.center_bias,
                        self.depth_bias + dx[lay.db] if lay.depth_bias else self.depth_bias,
                        lay)
