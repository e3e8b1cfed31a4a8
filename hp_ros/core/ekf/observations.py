"""Observation models: one small class per kind of measurement.

Every model is built for one measurement ``z`` and exposes

* ``h(x)``: the predicted measurement at the nominal state ``x`` (:class:`~hp_ros.core.ekf.state.Estimate`),
* ``H(x)`` ``(m, n)``: its Jacobian w.r.t. the error state ``dx`` - precisely, with the residual
  ``r(x) = residual(h(x))``: ``r(x ⊞ dx) = r(x) - H(x) dx + O(dx^2)`` (for vector measurements
  ``residual(h) = z - h``, so ``H = dh/dx``; a pose measurement's residual is a rotation vector,
  :class:`PoseObservation`),
* ``R`` ``(m, m)``: the measurement noise,
* ``frozen``: state indices the update must not correct (None: all may be corrected),
* ``linearize(x) -> (h, H)``: both at once (what the tracker calls; some share work).

``test/test_ekf_observation_models.py`` checks every model's ``H`` against central finite
differences of ``residual(h(x ⊞ δ))``. A new kind of observation: a class here (or a module of its
own) with these members, one ``update_<kind>`` method on :class:`~hp_ros.core.ekf.tracker.EKFTracker`
that builds it and calls ``_apply``, its name in ``OBSERVATION_MODELS`` below and a case in that
test (and in :data:`~hp_ros.core.ekf.track_policy.OBJECT_KINDS` when it observes the object).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from hp_ros.core.ekf.geometry import (apply_delta_np, camera_error_map, point_jacobian, pose_error, project,
                                      so3_right_jacobian_inv)
from hp_ros.core.ekf.state import Estimate

__all__ = ["ObservationModel", "Fingertips2D", "Fingertips3D", "CenterObservation", "Center3D", "PoseObservation",
           "OBSERVATION_MODELS", "hand_points_in_camera", "object_point_in_camera"]


# ----------------------------------------------------------------------------- shared point models

def hand_points_in_camera(x: Estimate, p_hand: np.ndarray):
    """Camera points ``(N, 3)`` of hand-frame points ``(N, 3)`` and ``d p / d dx`` ``(N, 3, n)``
    (only the calibration block: the joint angles are measured, not estimated)."""
    lay = x.layout
    p = p_hand @ x.T_ch[:3, :3].T + x.T_ch[:3, 3]
    H = np.zeros((len(p_hand), 3, lay.n))
    if lay.calibration:
        for i in range(len(p_hand)):
            H[i, :, 6:12] = point_jacobian(x.T_ch, p_hand[i])
    return p, H


def object_point_in_camera(x: Estimate, p_obj: np.ndarray):
    """Camera point ``(3,)`` of an object-frame point ``(3,)`` and ``d p / d dx`` ``(3, n)``."""
    lay = x.layout
    p_h = x.T_ho[:3, :3] @ p_obj + x.T_ho[:3, 3]
    p = x.T_ch[:3, :3] @ p_h + x.T_ch[:3, 3]
    H = np.zeros((3, lay.n))
    H[:, :6] = x.T_ch[:3, :3] @ point_jacobian(x.T_ho, p_obj)
    if lay.calibration:
        H[:, 6:12] = point_jacobian(x.T_ch, p_h)
    return p, H


# ----------------------------------------------------------------------------- the models

class ObservationModel:
    """Interface (see the module docstring). Subclasses set ``kind`` and implement :meth:`linearize`."""

    kind = ""
    frozen: Optional[np.ndarray] = None

    def __init__(self, z, R: np.ndarray):
        self.z, self.R = z, R

    def linearize(self, x: Estimate):
        """``(h(x), H(x))``."""
        raise NotImplementedError

    def h(self, x: Estimate):
        return self.linearize(x)[0]

    def H(self, x: Estimate) -> np.ndarray:
        return self.linearize(x)[1]

    def residual(self, hx) -> np.ndarray:
        """``z ⊟ h`` ``(m,)``."""
        return self.z - hx


class Fingertips2D(ObservationModel):
    """Fingertip pixels: ``h = pi(T_cam_hand tip)`` ``(2N,)`` (u, v per tip) for the seen tips
    ``tips_hand`` ``(N, 3)`` (hand frame, from the measured joints); ``z`` ``(N, 2)``; white noise
    ``sigma`` [px]. Only the calibration block of ``H`` is non-zero."""

    kind = "fingertips_2d"

    def __init__(self, K: np.ndarray, tips_hand: np.ndarray, z: np.ndarray, sigma: float):
        super().__init__(z.reshape(-1), np.eye(2 * len(tips_hand)) * sigma ** 2)
        self.K, self.tips_hand = K, tips_hand

    def camera_points(self, x: Estimate) -> np.ndarray:
        """``(N, 3)`` tips in the camera (a tip behind the camera cannot be projected)."""
        return self.tips_hand @ x.T_ch[:3, :3].T + x.T_ch[:3, 3]

    def linearize(self, x: Estimate):
        p, Hp = hand_points_in_camera(x, self.tips_hand)
        h, Jp = project(self.K, p)
        return h.reshape(-1), np.einsum("nij,njk->nik", Jp, Hp).reshape(-1, x.layout.n)


class Fingertips3D(ObservationModel):
    """Fingertip points in the camera: ``h = T_cam_hand tip`` ``(3N,)``; ``z`` ``(N, 3)``; white
    noise ``sigma`` [m] per axis."""

    kind = "fingertips_3d"

    def __init__(self, tips_hand: np.ndarray, z: np.ndarray, sigma: float):
        super().__init__(z.reshape(-1), np.eye(3 * len(tips_hand)) * sigma ** 2)
        self.tips_hand = tips_hand

    def linearize(self, x: Estimate):
        p, Hp = hand_points_in_camera(x, self.tips_hand)
        return p.reshape(-1), Hp.reshape(-1, x.layout.n)


class CenterObservation(ObservationModel):
    """Mask centroid pixel and median depth: ``h = (pi(c), z(c)) + offset(x) + b`` ``(3,)`` (``(2,)``
    without depth), ``c`` the model centre in the camera, ``offset`` the visible surface's
    (``visible_stats(T_cam_obj) -> (offset (3,), spread (3,))``), ``b`` the bias state.

    The offset's translation derivative is a forward difference (step ``offset_eps``; 0 = offset
    held constant). Its rotation dependence is strongly non-linear at the rotation uncertainties
    this filter carries (0.05-0.15 rad: a box's median depth moves by ~1 cm and not linearly), so
    it is *statistically* linearised (second-order EKF / sigma points): the offset is evaluated at
    +-1 sigma along the principal axes of the rotation covariance (``P`` ``(n, n)``); the central
    differences give the slope in ``H``, and the curvature ``c_k = (f+ + f- - 2 f0) / 2`` gives the
    expected second-order term (added to ``h``: ``sum c_k``) and its variance (``consider_cov`` =
    ``2 sum c_k c_k^T``, added to ``R``). Without this the filter treats a model error that
    persists for seconds as a precise measurement and becomes over-confident in rotation. The
    derivative is cached (``cache``: ``(T_cam_obj, D (3, 6), eps, shift (3,), C (3, 3))``) until the
    pose moved by more than 0.03 rad / 5 mm (each offset evaluation costs ~0.5 ms). With
    ``rotation="consider"`` the rotation dependence only inflates the noise (``D_r P D_r^T``).

    After :meth:`linearize`: ``spread`` (of the visible surface), ``consider_cov``, ``cache`` and
    ``R`` = ``R_white`` + ``consider_cov`` (the tracker keeps the first three).
    """

    kind = "center"

    def __init__(self, K: np.ndarray, center_obj: np.ndarray, visible_stats: Callable, P: np.ndarray,
                 z: Optional[np.ndarray] = None, R_white: Optional[np.ndarray] = None, rotation: str = "model",
                 offset_eps: float = 1e-3, cache=None, frozen: Optional[np.ndarray] = None):
        super().__init__(z, R_white)
        self.K, self.center_obj, self.visible_stats, self.P = K, center_obj, visible_stats, P
        self.rotation, self.offset_eps, self.cache, self.frozen = rotation, offset_eps, cache, frozen
        self.with_depth = z is None or len(z) == 3
        self.R_white = R_white
        self.spread = np.zeros(3)
        self.consider_cov = np.zeros((3, 3))

    def linearize(self, x: Estimate):
        h, H = self._linearize_uvz(x)
        if self.R_white is not None:
            self.R = self.R_white + self.consider_cov
            if not self.with_depth:
                self.R = self.R[:2, :2]
        return (h, H) if self.with_depth else (h[:2], H[:2])

    def _offset(self, T: np.ndarray) -> np.ndarray:
        return self.visible_stats(T)[0]

    def _linearize_uvz(self, x: Estimate):
        lay = x.layout
        p, Hp = object_point_in_camera(x, self.center_obj)
        uv, Jp = project(self.K, p[None])
        T = x.T_cam_obj
        off, self.spread = self.visible_stats(T)
        h = np.array([uv[0, 0], uv[0, 1], p[2]]) + off + x.center_bias
        H = np.vstack([Jp[0] @ Hp, Hp[2:3]])
        if lay.center_bias:
            H[:, lay.cb] = np.eye(3)
        self.consider_cov = np.zeros((3, 3))
        eps = self.offset_eps
        if eps <= 0:
            return h, H
        G = np.zeros((6, lay.n))
        G[:, :lay.n_pose] = camera_error_map(x.T_ch, x.T_ho, lay.calibration)
        cache = self.cache
        if (cache is None or cache[2] != eps or np.linalg.norm(pose_error(T, cache[0])[:3]) > 0.005
                or np.linalg.norm(pose_error(T, cache[0])[3:]) > 0.03):
            self.cache = cache = self._offset_derivative(T, off, G)
        D = cache[1]
        if self.rotation == "model":
            # in H the filter keeps the translation-rotation correlation a rotation error creates
            # (as noise it would average a persistent error away)
            H = H + D @ G
            h = h + cache[3]
            self.consider_cov = cache[4]
        else:
            H = H + D[:, :3] @ G[:3]
            Dr = D[:, 3:] @ G[3:]
            self.consider_cov = Dr @ self.P @ Dr.T
        return h, H

    def _offset_derivative(self, T: np.ndarray, off: np.ndarray, G: np.ndarray):
        """The cache entry at ``T``: ``d offset / d xi_cam`` ``(3, 6)`` (apply_delta convention) and, for
        ``rotation="model"``, the second-order shift ``(3,)`` and its covariance ``(3, 3)``."""
        eps = self.offset_eps
        D = np.zeros((3, 6))
        for k in range(3):
            d = np.zeros(6)
            d[k] = eps
            D[:, k] = (self._offset(apply_delta_np(T, d)) - off) / eps
        shift, C = np.zeros(3), np.zeros((3, 3))
        if self.rotation == "model":
            P_rot = (G[3:] @ self.P @ G[3:].T)
            lam, V = np.linalg.eigh((P_rot + P_rot.T) / 2)
            for k in range(3):
                step = float(np.clip(np.sqrt(max(lam[k], 0.0)), eps, 0.3))
                d = np.zeros(6)
                d[3:] = step * V[:, k]
                f_plus = self._offset(apply_delta_np(T, d)) - off
                f_minus = self._offset(apply_delta_np(T, -d)) - off
                D[:, 3:] += np.outer((f_plus - f_minus) / (2 * step), V[:, k])
                ck = (f_plus + f_minus) / 2
                shift += ck
                C += 2 * np.outer(ck, ck)
        else:
            for k in range(3, 6):
                d = np.zeros(6)
                d[k] = eps
                D[:, k] = (self._offset(apply_delta_np(T, d)) - off) / eps
        return (T.copy(), D, eps, shift, C)


class Center3D(ObservationModel):
    """Back-projected visible centre ``(3,)`` (camera frame, e.g. the centroid pixel at the median
    depth): ``h`` = the :class:`CenterObservation` prediction without its bias, back-projected;
    ``H`` = the model centre's point Jacobian (the visible offset is held constant); white noise
    ``sigma`` [m] per axis. ``uvz``: the :class:`CenterObservation` (no measurement) it uses."""

    kind = "center_3d"

    def __init__(self, uvz: CenterObservation, z: np.ndarray, sigma: float):
        super().__init__(z, np.eye(3) * sigma ** 2)
        self.uvz = uvz
        self.K_inv = np.linalg.inv(uvz.K)

    def linearize(self, x: Estimate):
        h_uvz = self.uvz.linearize(x)[0] - x.center_bias  # the bias state belongs to the 2D + depth centroid
        h = h_uvz[2] * (self.K_inv @ np.array([h_uvz[0], h_uvz[1], 1.0]))
        _, Hp = object_point_in_camera(x, self.uvz.center_obj)
        return h, Hp


class PoseObservation(ObservationModel):
    """A measured object pose ``z`` ``(4, 4)`` in the camera with covariance ``R`` ``(6, 6)``
    (apply_delta convention: x, y, z, rx, ry, rz).

    ``h(x) = T_cam_obj`` (moved by the depth-fit bias, ``apply_delta(T, b)``, when ``depth_bias``
    and the bias states exist); the residual is :func:`pose_error` ``(t_z - t, log(R_z R^T))`` - a
    rotation vector, so no angle wraps. The estimate's camera error ``(v, w)`` moves it by
    ``(-v, -J_r^-1(phi) w)`` (:func:`so3_right_jacobian_inv`, ``phi`` the rotation residual), so
    ``H = blockdiag(I, J_r^-1(phi)) G`` with ``G`` the :func:`camera_error_map`, and
    ``blockdiag(I, J_r^-1)`` in the bias columns."""

    kind = "pose"

    def __init__(self, z: np.ndarray, R: np.ndarray, depth_bias: bool = False, kind: str = "pose"):
        super().__init__(z, R)
        self.depth_bias, self.kind = depth_bias, kind

    def linearize(self, x: Estimate):
        lay = x.layout
        T_h = x.T_cam_obj
        use_b = self.depth_bias and lay.depth_bias
        if use_b:
            T_h = apply_delta_np(T_h, x.depth_bias)
        r = self.residual(T_h)
        H = np.zeros((6, lay.n))
        G = camera_error_map(x.T_ch, x.T_ho, lay.calibration)
        Jr = so3_right_jacobian_inv(r[3:])
        H[:3, :lay.n_pose] = G[:3]
        H[3:, :lay.n_pose] = Jr @ G[3:]
        if use_b:
            H[:3, lay.db.start:lay.db.start + 3] = np.eye(3)
            H[3:, lay.db.start + 3:lay.db.stop] = Jr
        return T_h, H

    def residual(self, hx: np.ndarray) -> np.ndarray:
        return pose_error(self.z, hx)


# every kind of observation the tracker takes (the finite-difference test covers each)
OBSERVATION_MODELS = (Fingertips2D, Fingertips3D, CenterObservation, Center3D, PoseObservation)
