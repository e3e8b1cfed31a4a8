"""The measurement side of :class:`hp_ros.core.ekf.tracker.EKFTracker` (mixed in): the observation
models linearised at the estimate (fingertips, the visible centre, poses) and the gated updates
that apply them (NIS gate, slip prior, Schmidt-frozen states, Joseph form).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from hp_ros.core.ekf import filter as kf
from hp_ros.core.ekf import track_policy
from hp_ros.core.ekf.filter import UpdateResult, refused
from hp_ros.core.ekf.observations import (Center3D, CenterObservation, Fingertips2D, Fingertips3D, ObservationModel,
                                          PoseObservation, hand_points_in_camera, object_point_in_camera)

__all__ = ["TrackerUpdates"]


class TrackerUpdates:
    """Mixin of :class:`~hp_ros.core.ekf.tracker.EKFTracker` (uses its ``cfg``, ``K``, ``P``, ``x`` /
    ``_set_x``, ``calib``, ``_rotation_idx``, ``center_obj``, ``visible_surface``, ``kin``, ``_T_links``,
    ``_gate``, ``rejections``, ``pose_rejections``, ``initialized``, ``_check_pose``, ``_check_lost``): the measurement
    models at the estimate and one ``update_<kind>`` per observation model. Sets ``last_nis`` /
    ``last_gate``, ``rejections`` and the centre model's ``center_spread``, ``center_consider_cov``,
    ``_offset_jac``."""

    def fingertip_points_hand(self, q=None) -> np.ndarray:
        """Fingertip points ``(4, 3)`` in the hand frame (link origin + ``fingertip_offset`` along z)."""
        T = self._forward_kinematics(self._as_q(q)) if q is not None else self._T_links
        if T is None:
            raise RuntimeError("no joint state yet: call predict() or initialize(q=...) first")
        return self.kin.fingertip_points(T, self.cfg.fingertip_offset)

    def _hand_point_model(self, p_hand: np.ndarray):
        """Camera points ``(N, 3)`` of hand points and ``d p / d state`` ``(N, 3, n)``."""
        return hand_points_in_camera(self.x, p_hand)

    def _object_point_model(self, p_obj: np.ndarray):
        """Camera point ``(3,)`` of an object-frame point and ``d p / d state`` ``(3, n)``."""
        return object_point_in_camera(self.x, p_obj)

    def visible_center_offset(self, T_cam_obj: Optional[np.ndarray] = None) -> np.ndarray:
        """``(du, dv, dz)``: visible-surface centroid pixel and median depth minus the projected
        model centre and its depth, at ``T_cam_obj`` ``(4, 4)`` (default: the estimate).

        The segmentation measures the centroid of the *visible* mask and the median depth of the
        *visible* surface; both differ from the model centre (a can's visible half-cylinder lies
        in front of its axis, a box seen obliquely shows its nearer faces). Hand occlusion is not
        modelled (observation noise). See :meth:`VisibleSurface.stats`.
        """
        return self._visible_stats(self.T_cam_obj if T_cam_obj is None else T_cam_obj)[0]

    def _visible_stats(self, T: np.ndarray):
        """Offset ``(3,)`` and spread ``(3,)`` of the visible surface at ``T`` ``(4, 4)``."""
        return self.visible_surface.stats(T, self.K, self.center_obj)

    def _center_observation(self, z=None, R_white=None, offset_eps: float = 1e-3, frozen=None) -> CenterObservation:
        return CenterObservation(self.K, self.center_obj, self._visible_stats, self.P, z, R_white,
                                 self.cfg.center_rotation, offset_eps, self._offset_jac, frozen)

    def _linearize_center(self, model: CenterObservation):
        """``(h, H)`` of a centre model at the estimate; keeps what it found about the visible surface."""
        h, H = model.linearize(self.x)
        self._keep_center_stats(model)
        return h, H

    def _keep_center_stats(self, model: CenterObservation) -> None:
        self.center_spread, self.center_consider_cov, self._offset_jac = model.spread, model.consider_cov, model.cache

    def center_model(self, offset_eps: float = 1e-3):
        """``h = (u, v, depth)`` ``(3,)`` expected for the visible mask centroid / median depth, and
        ``H`` ``(3, n)`` (:class:`~hp_ros.core.ekf.observations.CenterObservation`: the visible
        offset's derivative is a forward difference of step ``offset_eps``, 0 = offset held
        constant; its rotation dependence is statistically linearised). Sets
        :attr:`center_consider_cov` (the second-order term's variance, added by :meth:`update_center`)
        and the visible surface's spread."""
        return self._linearize_center(self._center_observation(offset_eps=offset_eps))

    # ------------------------------------------------------------------ updates
    OBJECT_KINDS = track_policy.OBJECT_KINDS

    def _update(self, kind: str, r: np.ndarray, H: np.ndarray, R: np.ndarray,
                frozen: Optional[np.ndarray] = None) -> UpdateResult:
        """Gated update (:mod:`hp_ros.core.ekf.filter`). ``frozen``: state indices this observation
        must not correct (their gain rows are zeroed - a Schmidt / consider update; the Joseph form
        keeps P right for that sub-optimal gain)."""
        if not self.initialized:
            return refused(kind, "not initialised", len(r))
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(H))):
            return refused(kind, "non-finite innovation", len(r))
        try:
            S, nis = kf.innovation(self.P, r, H, R)
        except np.linalg.LinAlgError:
            return refused(kind, "singular innovation covariance", len(r))
        gate, note = self._gate(self.cfg.gate_probability, len(r)), ""
        if nis > gate:  # a slip of the object in the hand explains it? (track_policy.slip_prior)
            P_slip = track_policy.slip_prior(self.cfg, kind, self.pose_rejections, self.P)
            S_slip, nis_slip = kf.innovation(P_slip, r, H, R) if P_slip is not None else (S, nis)
            if nis_slip <= gate:
                self.P, S, nis, note = P_slip, S_slip, nis_slip, "slip"
        self.last_nis, self.last_gate = nis, gate
        if nis > gate:
            self._count(kind, False)
            return UpdateResult(kind, False, nis, gate, len(r), "gated")
        Kg = kf.kalman_gain(self.P, H, S, frozen)
        dx = Kg @ r
        self.P = kf.joseph_update(self.P, Kg, H, R)
        self._set_x(self.x.boxplus(dx))
        self._count(kind, True)
        return UpdateResult(kind, True, nis, gate, len(r), note)

    def _count(self, kind: str, accepted: bool) -> None:
        """The consecutive-rejection counts after a gated update (LOST: object kinds; the slip test:
        full poses, see :func:`~hp_ros.core.ekf.track_policy.rejections_after`), then the LOST rules."""
        self.rejections = track_policy.rejections_after(kind, accepted, self.rejections)
        self.pose_rejections = track_policy.rejections_after(kind, accepted, self.pose_rejections,
                                                             track_policy.SLIP_KINDS)
        self._check_lost()

    def _apply(self, model: ObservationModel) -> UpdateResult:
        """Linearise ``model`` at the estimate and run the gated update with its residual."""
        h, H = model.linearize(self.x)
        return self._update(model.kind, model.residual(h), H, model.R, model.frozen)

    def _seen_fingertips(self, kind: str, z: np.ndarray):
        """Bool ``(4,)``: the rows of a fingertip observation ``(4, d)`` that were seen (finite), or
        the refusal when fingertips cannot be used (no calibration states, nothing seen)."""
        if not self.calib:
            return refused(kind, "fingertips need estimate_calibration")
        seen = np.all(np.isfinite(z), axis=1)
        if z.shape[0] != 4 or seen.sum() < 1:
            return refused(kind, "no fingertip seen")
        return seen

    def update_fingertips_2d(self, uv, q=None, sigma_px: Optional[float] = None) -> UpdateResult:
        """Observed fingertip pixels ``(4, 2)`` (thumb, index, middle, ring; NaN rows = not seen)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if self.K is None:
            return refused("fingertips_2d", "no camera intrinsics")
        seen = self._seen_fingertips("fingertips_2d", uv)
        if isinstance(seen, UpdateResult):
            return seen
        s = self.cfg.fingertip_px_sigma if sigma_px is None else sigma_px
        model = Fingertips2D(self.K, self.fingertip_points_hand(q)[seen], uv[seen], s)
        if np.any(model.camera_points(self.x)[:, 2] <= 1e-3):
            return refused("fingertips_2d", "fingertip behind the camera")
        return self._apply(model)

    def update_fingertips_3d(self, p_cam, q=None, sigma: Optional[float] = None) -> UpdateResult:
        """Observed fingertip points ``(4, 3)`` in the camera frame (NaN rows = not seen)."""
        z = np.asarray(p_cam, dtype=np.float64).reshape(-1, 3)
        seen = self._seen_fingertips("fingertips_3d", z)
        if isinstance(seen, UpdateResult):
            return seen
        s = self.cfg.fingertip_3d_sigma if sigma is None else sigma
        return self._apply(Fingertips3D(self.fingertip_points_hand(q)[seen], z[seen], s))

    def update_center(self, u: float, v: float, depth: float = float("nan"),
                      sigma_px: Optional[float] = None, sigma_depth: Optional[float] = None) -> UpdateResult:
        """Mask centroid pixel ``(u, v)`` and median depth [m] inside the mask (NaN: pixel only)."""
        if self.K is None:
            return refused("center", "no camera intrinsics")
        if not (math.isfinite(u) and math.isfinite(v)):
            return refused("center", "non-finite centroid")
        sp = self.cfg.center_px_sigma if sigma_px is None else sigma_px
        sd = self.cfg.center_depth_sigma if sigma_depth is None else sigma_depth
        frozen = None if self.cfg.center_corrects_rotation else self._rotation_idx
        z = np.array([u, v, depth]) if math.isfinite(depth) and depth > 0 else np.array([u, v])
        model = self._center_observation(z, np.diag([sp ** 2, sp ** 2, sd ** 2]), frozen=frozen)
        h, H = self._linearize_center(model)
        return self._update(model.kind, model.residual(h), H, model.R, model.frozen)

    def update_center_3d(self, p_cam, sigma: Optional[float] = None) -> UpdateResult:
        """Back-projected visible centre ``(3,)`` (camera frame, e.g. the centroid pixel at the median
        depth): compared with the model centre moved by the visible-surface offset."""
        z = np.asarray(p_cam, dtype=np.float64).reshape(3)
        if self.K is None:
            return refused("center_3d", "no camera intrinsics")
        s = self.cfg.center_3d_sigma if sigma is None else sigma
        model = Center3D(self._center_observation(), z, s)
        h, H = model.linearize(self.x)
        self._keep_center_stats(model.uvz)
        return self._update(model.kind, model.residual(h), H, model.R, model.frozen)

    def pose_model(self, T_cam_obj_meas: np.ndarray, depth_bias: bool = False):
        """Residual ``r`` ``(6,)`` = :func:`pose_error` of a measured pose ``(4, 4)`` against the
        estimate, and ``H`` ``(6, n)`` with ``r(x + dx) = r - H dx + O(dx^2)``
        (:class:`~hp_ros.core.ekf.observations.PoseObservation`; ``depth_bias``: the measurement is
        the pose moved by the depth-fit bias, when those states exist)."""
        model = PoseObservation(T_cam_obj_meas, None, depth_bias)
        T_h, H = model.linearize(self.x)
        return model.residual(T_h), H

    def update_pose(self, T_cam_obj_meas, covariance: Optional[np.ndarray] = None, confidence: float = 1.0,
                    kind: str = "pose") -> UpdateResult:
        """Pose measurement ``(4, 4)`` of the object in the camera with its covariance ``(6, 6)``
        (apply_delta convention: x, y, z, rx, ry, rz; default ``pose_pos_sigma`` / ``pose_rot_sigma``).
        ``confidence`` in [0, 1]: 0 (or NaN) = no measurement, ignored (refused, not counted)."""
        if not (confidence > 0):
            return refused(kind, "confidence 0", 6)
        T = self._check_pose(T_cam_obj_meas, "T_cam_obj_meas")
        c = self.cfg
        R = (np.asarray(covariance, dtype=np.float64) if covariance is not None
             else np.diag([c.pose_pos_sigma ** 2] * 3 + [c.pose_rot_sigma ** 2] * 3))
        if R.shape != (6, 6) or not np.all(np.isfinite(R)):
            raise ValueError(f"pose covariance must be a finite (6, 6) matrix, got shape {R.shape}")
        return self._apply(PoseObservation(T, (R + R.T) / 2, depth_bias=kind == "depth_pose", kind=kind))

    def depth_pose_covariance(self, icp_covariance: np.ndarray) -> np.ndarray:
        """Noise ``(6, 6)`` of a depth fit of the model backend (:class:`~hp_ros.core.segmentation.ModelFit`):
        ``depth_cov_scale^2`` x its ICP covariance (depth noise) + ``diag(depth_pos_sigma^2 (3),
        depth_rot_sigma^2 (3))`` (model / occlusion error, measured against ground truth)."""
        c = self.cfg
        C = np.asarray(icp_covariance, dtype=np.float64)
        return c.depth_cov_scale ** 2 * C + np.diag([c.depth_pos_sigma ** 2] * 3 + [c.depth_rot_sigma ** 2] * 3)

    def update_depth_pose(self, T_cam_obj_fit, icp_covariance: Optional[np.ndarray], confidence: float) -> UpdateResult:
        """The model backend's depth fit ``(4, 4)`` (rotation included) as a pose update, with the
        noise of :meth:`depth_pose_covariance`; gated on its NIS like every update and ignored when
        its ``confidence`` (depth agreement, [0, 1]) is below ``depth_min_confidence`` or 0, or it
        has no covariance (no ICP step ran)."""
        if icp_covariance is None or not (confidence > 0) or confidence < self.cfg.depth_min_confidence:
            return refused("depth_pose", "no fit" if icp_covariance is None else "low confidence", 6)
        self._since_fit = 0.0  # fits arrive: the process model's depth_* noise (motion_config)
        return self.update_pose(T_cam_obj_fit, self.depth_pose_covariance(icp_covariance), confidence, "depth_pose")
