"""A moving hand base: the camera->hand transform as a control input, like the joints.

On an arm the published camera->hand transform ``T_pub`` (``/tf`` at each stamp) changes every
step. The filter's estimate of it is ``T_ch = T_pub C`` with ``C`` the (estimated) correction,
fixed to the hand (its mount on the flange); the object state ``T_ho`` lives in the hand frame and
is carried by the base unchanged. Moving the base from ``T_pub`` to ``T_pub'`` is the motion
``A = T_pub' T_pub^-1`` applied to ``T_ch`` from the left, so the camera-frame calibration error
is transported by ``blockdiag(R_A, R_A)`` (:func:`hp_ros.core.ekf.geometry.propagate_jacobian`).

Process noise: the /tf is not exact (arm encoders, link flex, its own interpolation): a random walk
in the distance and the angle the base moved (``base_pos_random_walk`` m per sqrt(m),
``base_rot_random_walk`` rad per sqrt(rad), :class:`hp_ros.core.ekf.EKFConfig`), camera frame, on
the calibration block - or on the object block when the calibration is not estimated.
"""
from __future__ import annotations

import numpy as np

from hp_ros.core.ekf.geometry import camera_error_map, propagate_jacobian, so3_log

__all__ = ["move_hand_base", "base_motion_noise"]


def base_motion_noise(A: np.ndarray, cfg) -> np.ndarray:
    """``(6, 6)`` camera-frame covariance added for a base motion ``A`` ``(4, 4)``."""
    trans = float(np.linalg.norm(A[:3, 3]))
    ang = float(np.linalg.norm(so3_log(A[:3, :3])))
    sp2 = cfg.base_pos_random_walk ** 2 * (trans + ang * 0.1)   # a turn moves points 10 cm out by 0.1 m/rad
    sr2 = cfg.base_rot_random_walk ** 2 * ang
    return np.diag([sp2] * 3 + [sr2] * 3)


def move_hand_base(ekf, T_pub_new: np.ndarray) -> bool:
    """Move ``ekf`` (an :class:`hp_ros.core.ekf.EKFTracker`) to the published camera->hand
    ``T_pub_new`` ``(4, 4)``; False (nothing changed) when it equals the current one."""
    T_old = ekf.T_cam_hand_pub
    if np.array_equal(T_old, T_pub_new):
        return False
    A = T_pub_new @ np.linalg.inv(T_old)
    ekf.T_cam_hand_pub = np.asarray(T_pub_new, dtype=np.float64).copy()
    if not ekf.initialized:
        ekf.T_ch = ekf.T_cam_hand_pub.copy()
        return True
    ekf.T_ch = A @ ekf.T_ch
    Qc = base_motion_noise(A, ekf.cfg)
    P = ekf.P
    if ekf.calib:
        F = propagate_jacobian(A)
        P[6:12, :] = F @ P[6:12, :]
        P[:, 6:12] = P[:, 6:12] @ F.T
        P[6:12, 6:12] += Qc
    else:   # the base error moves the object in the camera: into the object block (hand frame)
        G = camera_error_map(ekf.T_ch, ekf.T_ho, True)
        M = np.linalg.solve(G[:, :6], G[:, 6:])
        P[:6, :6] += M @ Qc @ M.T
    ekf.P = 0.5 * (P + P.T)
    ekf._offset_jac = None
    return True


class HandBaseTrack:
    """Camera->hand at any stamp from a :class:`hp_ros.core.tf_buffer.TransformBuffer` (``/tf`` and
    ``/tf_static`` fed by the caller): static chains give one value, chains with ``/tf`` edges are
    interpolated at the stamp. ``held`` counts lookups past the newest ``/tf`` (the newest value
    held: a frame that waited its pairing timeout for ``/tf``)."""

    def __init__(self, buffer, camera_frame: str, hand_frame: str, refresh=None):
        self.buffer, self.camera_frame, self.hand_frame = buffer, camera_frame, hand_frame
        self.held = 0
        self.refresh = refresh or (lambda: None)   # called before each lookup (e.g. take the waiting /tf)
        self._moving = (-1, False)  # (buffer topology, moving): asked several times per frame, changes rarely

    @property
    def moving(self) -> bool:
        """The chain is connected and has a ``/tf`` edge."""
        self.refresh()
        b = self.buffer
        if self._moving[0] != b.topology:
            self._moving = (b.topology, b.has_dynamic_edge(self.camera_frame, self.hand_frame))
        return self._moving[1]

    def covers(self, stamp: int) -> bool:
        """A lookup at ``stamp`` interpolates (no waiting needed): static, or ``/tf`` reaches it."""
        self.refresh()
        latest = self.buffer.latest_stamp(self.camera_frame, self.hand_frame)
        return self.buffer.can_transform(self.camera_frame, self.hand_frame) and (latest is None or latest >= stamp)

    def at(self, stamp: int):
        """``T_cam_hand`` ``(4, 4)`` at ``stamp`` (newest held past the end, oldest before the start);
        None when the frames are not connected."""
        from hp_ros.core.tf_buffer import ExtrapolationError

        self.refresh()
        b = self.buffer
        try:
            return b.lookup_transform(self.camera_frame, self.hand_frame, stamp)
        except ExtrapolationError:
            latest = b.latest_stamp(self.camera_frame, self.hand_frame)
            self.held += int(latest is not None and stamp > latest)
            try:
                return b.lookup_transform(self.camera_frame, self.hand_frame, 0 if stamp > (latest or 0)
                                          else b.oldest_stamp(self.camera_frame, self.hand_frame))
            except (LookupError, ExtrapolationError):
                return None
        except LookupError:
            return None
