"""The EKF tracker: :class:`EKFTracker` composes the process model, the observation models and the
filter equations, and keeps the state, the covariance and the LOST counters (the package
docstring, :mod:`hp_ros.core.ekf`, describes the method and its tuning). The observation models and
updates are the mixin :class:`~hp_ros.core.ekf.tracker_updates.TrackerUpdates`.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import numpy as np

from hp_ros.core.ekf import filter as kf
from hp_ros.core.ekf import motion as dyn
from hp_ros.core.ekf import penetration, track_policy
from hp_ros.core.ekf.config import EKFConfig
from hp_ros.core.ekf.geometry import camera_error_map, pose_error
from hp_ros.core.ekf.kinematics import HandKinematics
from hp_ros.core.ekf.penetration import ProjectionResult
from hp_ros.core.ekf.state import Estimate, StateLayout
from hp_ros.core.ekf.track_policy import TrackState
from hp_ros.core.ekf.tracker_updates import TrackerUpdates
from hp_ros.core.ekf.visibility import VisibleSurface
from hp_ros.core.quasistatic import ContactMotion

__all__ = ["EKFTracker"]


_EYE3 = np.eye(3)


class EKFTracker(TrackerUpdates):
    """EKF on the object pose (+ camera->hand correction). See the package docstring.

    ``hand``: :class:`hp_ros.core.hand.HandModel`; ``obj``: :class:`hp_ros.core.objects.ObjectModel`;
    ``K`` ``(3, 3)`` camera matrix (may be set later with :meth:`set_camera`);
    ``T_cam_hand`` ``(4, 4)`` published calibration; ``object_sdf``: a prebuilt
    :class:`hp_ros.core.sdf.MeshSDF` (built from ``obj`` when None).

    State: ``T_ho`` (object in the hand frame), ``T_ch`` (camera->hand), ``center_bias`` ``(3,)``,
    ``depth_bias`` ``(6,)`` (together the nominal state :attr:`x`) and ``P`` ``(n, n)`` over the
    error state laid out by :attr:`layout`.
    """

    def __init__(self, hand, obj, K: Optional[np.ndarray], T_cam_hand: np.ndarray,
                 config: Optional[EKFConfig] = None, object_sdf=None):
        from hp_ros.core.sdf import MeshSDF

        self.hand, self.obj = hand, obj
        self.cfg = config or EKFConfig()
        self._cfg_with_fits = None  # (cfg, cfg with the depth_* values), see motion_config
        self.K = None if K is None else self._check_K(K)
        self.T_cam_hand_pub = self._check_pose(T_cam_hand, "T_cam_hand")
        self.sdf = object_sdf if object_sdf is not None else MeshSDF(obj.vertices, obj.faces)
        v = obj.vertices.double()
        self.center_obj = ((v.min(0).values + v.max(0).values) / 2).numpy()  # model (bbox) centre
        self._box_lo, self._box_hi = v.min(0).values.numpy(), v.max(0).values.numpy()  # object frame
        self.visible_surface = VisibleSurface(obj)
        self.kin = HandKinematics(hand)
        self._gate = kf.NISGate()
        c = self.cfg
        self.layout = lay = StateLayout(
            calibration=c.estimate_calibration,
            center_bias=c.center_bias_px_sigma > 0 or c.center_bias_depth_sigma > 0 or c.center_bias_fraction > 0,
            depth_bias=c.depth_bias_pos_sigma > 0 or c.depth_bias_rot_sigma > 0)
        # the layout under the names the tracker always had
        self.calib, self.bias, self.depth_bias_on = lay.calibration, lay.center_bias, lay.depth_bias
        self.n_pose, self.n, self._cb, self._db = lay.n_pose, lay.n, lay.cb, lay.db
        self._rotation_idx = lay.rotation_idx
        self.reset()

    @property
    def _fk_factors(self):
        return self.kin.fk_factors

    @property
    def x(self) -> Estimate:
        """The nominal state (views of the tracker's arrays, not copies)."""
        return Estimate(self.T_ho, self.T_ch, self.center_bias, self.depth_bias, self.layout)

    def _set_x(self, x: Estimate) -> None:
        self.T_ho, self.T_ch, self.center_bias, self.depth_bias = x.T_ho, x.T_ch, x.center_bias, x.depth_bias

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _check_K(K) -> np.ndarray:
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K must be a finite (3, 3) camera matrix with fx, fy > 0, got {K.tolist()}")
        return K

    @staticmethod
    def _check_pose(T, name) -> np.ndarray:
        T = np.asarray(T.detach().cpu() if hasattr(T, "detach") else T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"{name} must be a finite (4, 4) pose, got shape {T.shape}")
        R = T[:3, :3]
        # (np.allclose costs 10x this: the check runs for every /tf step of a moving base)
        if float(np.abs(R @ R.T - _EYE3).max()) > 1e-4 or np.linalg.det(R) < 0:
            raise ValueError(f"{name} has no proper rotation block")
        return T

    def set_camera(self, K) -> None:
        self.K = self._check_K(K)

    def set_calibration(self, T_cam_hand) -> None:
        """New published camera->hand transform (keeps the object's camera pose)."""
        T = self._check_pose(T_cam_hand, "T_cam_hand")
        T_co = self.T_cam_obj if self.initialized else None
        self.T_cam_hand_pub = T
        self.T_ch = T.copy()
        if T_co is not None:
            self.T_ho = np.linalg.inv(self.T_ch) @ T_co

    def set_hand_base(self, T_cam_hand) -> bool:
        """The published camera->hand transform moved (an arm, ``/tf``): the object moves with the hand
        (:func:`hp_ros.core.ekf.hand_base.move_hand_base`). False when it did not change."""
        from hp_ros.core.ekf.hand_base import move_hand_base

        return move_hand_base(self, self._check_pose(T_cam_hand, "T_cam_hand"))

    def reset(self) -> None:
        """Forget the estimate (state INITIALIZING)."""
        self.state = TrackState.INITIALIZING
        self.message = "waiting for an initial pose"
        self.T_ch = self.T_cam_hand_pub.copy()
        self.T_ho = np.eye(4)
        self.P = np.eye(self.n)
        self._q_prev = None
        self._T_links = None      # (L, 4, 4) float64 link poses at the last joint vector
        self._velocity = np.zeros(6)  # hand-frame twist (v, w) per second, constant-velocity model
        self.center_consider_cov = np.zeros((3, 3))
        self.center_bias = np.zeros(3)    # estimated bias of the centre observation (u, v [px], depth [m])
        self.depth_bias = np.zeros(6)     # estimated bias of the depth fit (apply_delta error, camera frame)
        self.center_spread = np.zeros(3)  # spread of the visible surface (u, v [px], depth [m]), see center_model
        self._offset_jac = None       # cached (T_cam_obj, d offset / d xi (3, 6), eps), see center_model
        self._mask = None             # cached contact set and its age [s]
        self._mask_age = math.inf
        self.rejections = 0
        self.pose_rejections = 0      # consecutive full-pose rejections (track_policy.rejections_after, SLIP_KINDS)
        self.contact_count = 0
        self.last_motion: Optional[ContactMotion] = None
        self.last_step = None         # the last predict() as a dyn.PredictStep (see rerun)
        self.last_nis = float("nan")
        self.last_gate = float("nan")
        self._published = None        # (T_ho, T_ch, T_cam_obj) of the last projection, see T_cam_obj_published
        self._since_fit = math.inf    # s predicted since the last depth fit arrived (see motion_config)

    # what predict/update/initialize change: a snapshot of these is the whole filter state
    _DYNAMIC = ("state", "message", "T_cam_hand_pub", "T_ch", "T_ho", "P", "_q_prev", "_T_links", "_velocity", "center_consider_cov",
                "center_bias", "depth_bias", "center_spread", "_offset_jac", "_mask", "_mask_age", "rejections", "pose_rejections", "contact_count",
                "last_motion", "last_nis", "last_gate", "_published", "_since_fit")

    def snapshot(self) -> dict:
        """The filter's state (estimate, covariance, joint vector, contact set, LOST counters) as
        copies, for :meth:`restore` - e.g. to apply an observation that arrived after later
        frames were predicted (out-of-sequence: restore, update, re-predict)."""
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items() if k in self._DYNAMIC}

    def restore(self, snap: dict) -> None:
        """Return to a :meth:`snapshot` (the snapshot stays valid for another restore)."""
        for k, v in snap.items():
            setattr(self, k, v.copy() if isinstance(v, np.ndarray) else v)

    @property
    def initialized(self) -> bool:
        return self.state != TrackState.INITIALIZING

    def initialize(self, T_cam_obj, q=None, pos_sigma: Optional[float] = None, rot_sigma: Optional[float] = None,
                   keep_calibration: bool = True) -> None:
        """Start tracking from ``T_cam_obj`` ``(4, 4)`` (joint vector ``q`` ``(J,)`` optional)."""
        T_co = self._check_pose(T_cam_obj, "T_cam_obj")
        c = self.cfg
        if not keep_calibration or self.state == TrackState.INITIALIZING:
            self.T_ch = self.T_cam_hand_pub.copy()
            P_cal = np.diag([c.calib_pos_sigma ** 2] * 3 + [c.calib_rot_sigma ** 2] * 3)
        else:
            P_cal = self.P[6:12, 6:12].copy() if self.calib else None
        ps = c.init_pos_sigma if pos_sigma is None else pos_sigma
        rs = c.init_rot_sigma if rot_sigma is None else rot_sigma
        self.T_ho = np.linalg.inv(self.T_ch) @ T_co
        P_cam = np.diag([ps ** 2] * 3 + [rs ** 2] * 3)
        # the object prior is given in the camera frame: rotate it into the hand frame
        Rb = np.zeros((6, 6))
        Rb[:3, :3] = Rb[3:, 3:] = self.T_ch[:3, :3].T
        self.P = np.zeros((self.n, self.n))
        self.P[:6, :6] = Rb @ P_cam @ Rb.T
        if self.bias:
            if self.K is not None:
                self.center_spread = self._visible_stats(T_co)[1]
            self.P[self._cb, self._cb] = np.diag(self.center_bias_sigma ** 2)
        if self.depth_bias_on:
            self.P[self._db, self._db] = np.diag(self.depth_bias_sigma ** 2)
        if self.calib:
            self.P[6:12, 6:12] = P_cal
            # T_cam_obj is given: a calibration error must not move the object in the camera
            G = camera_error_map(self.T_ch, self.T_ho, True)
            A = np.linalg.solve(G[:, :6], G[:, 6:])  # xi_ho = -A xi_ch keeps xi_cam = 0
            Pc = self.P[6:12, 6:12]
            self.P[:6, :6] += A @ Pc @ A.T
            self.P[:6, 6:12] = -A @ Pc
            self.P[6:12, :6] = self.P[:6, 6:12].T
        self._velocity[:] = 0
        self.center_bias = np.zeros(3)
        self.depth_bias = np.zeros(6)
        self._mask = None
        self.rejections = self.pose_rejections = 0
        self.state = TrackState.TRACKING
        self.message = "initialised"
        if q is not None:
            self._set_q(q)

    # ------------------------------------------------------------------ outputs
    @property
    def T_cam_obj(self) -> np.ndarray:
        """Object pose in the camera ``(4, 4)`` float64."""
        return self.T_ch @ self.T_ho

    @property
    def covariance(self) -> np.ndarray:
        """``(6, 6)`` covariance of ``T_cam_obj`` (apply_delta convention; x, y, z, rx, ry, rz)."""
        G = camera_error_map(self.T_ch, self.T_ho, self.calib)
        S = G @ self.P[:self.n_pose, :self.n_pose] @ G.T
        return (S + S.T) / 2

    @property
    def covariance_trace(self) -> float:
        return float(np.trace(self.covariance))

    @property
    def center_bias_sigma(self) -> np.ndarray:
        """``(3,)`` stationary sigma of the centre-observation bias (u, v [px], depth [m]): the
        configured floor, or ``center_bias_fraction`` x the visible surface's spread if larger."""
        c = self.cfg
        floor = np.array([c.center_bias_px_sigma] * 2 + [c.center_bias_depth_sigma])
        return np.sqrt(floor ** 2 + (c.center_bias_fraction * self.center_spread) ** 2)

    @property
    def depth_bias_sigma(self) -> np.ndarray:
        """``(6,)`` stationary sigma of the depth-fit bias (x, y, z [m], rx, ry, rz [rad])."""
        c = self.cfg
        return np.array([c.depth_bias_pos_sigma] * 3 + [c.depth_bias_rot_sigma] * 3)

    # ------------------------------------------------------------------ prediction
    def _as_q(self, q) -> np.ndarray:
        return self.kin.as_q(q)

    def _forward_kinematics(self, q: np.ndarray) -> np.ndarray:
        """Link poses ``(L, 4, 4)`` float64 (:meth:`HandKinematics.forward_kinematics`)."""
        return self.kin.forward_kinematics(q)

    def _set_q(self, q) -> None:
        q = self._as_q(q)
        self._T_links = self._forward_kinematics(q)
        self._q_prev = q

    def _candidate_points(self, ids: Optional[np.ndarray] = None) -> np.ndarray:
        """Contact-candidate points ``(K or len(ids), 3)`` in the hand frame at the last joint vector."""
        return self.kin.candidate_points(self._T_links, ids)

    def contacts(self) -> np.ndarray:
        """Bool ``(K,)``: which contact candidates touch the object at the current estimate."""
        return dyn.contact_set(self.sdf, self._candidate_points(), self.T_ho, self.cfg, (self._box_lo, self._box_hi))

    def predict(self, q, dt: float) -> ContactMotion:
        """Propagate with the joint vector ``q`` ``(J,)`` measured ``dt`` seconds after the previous one."""
        if not self.initialized:
            raise RuntimeError("predict() before initialize()")
        if not (dt >= 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be finite and >= 0, got {dt}")
        if self._q_prev is None:
            self._set_q(q)
            self.last_step = dyn.PredictStep(self._q_prev, dt, False, None, None, None, None, None, self._step_aux())
            return ContactMotion(np.eye(4), 0, False, 0.0, 0.0)
        self._since_fit += dt
        c = self.motion_config()
        # the contact set: queried on the SDF every contact_refresh seconds (0: every step)
        refreshed = self._mask is None or self._mask_age >= c.contact_refresh
        if refreshed:
            self._mask, self._mask_age = self.contacts(), 0.0
        self._mask_age += dt
        ids = dyn.carrying_contacts(self._mask, self.kin.cand_body, c.min_contact_bodies)
        p_prev = self._candidate_points(ids)
        self._set_q(q)
        step = dyn.object_motion(p_prev, self._candidate_points(ids), dt, self._velocity, c)
        self.contact_count = step.contacts.n_contacts
        self.last_motion = step.contacts
        self._velocity = step.velocity
        F, Q, a_cb, a_db = dyn.transition(self.layout, step, dt, c, self.center_bias_sigma, self.depth_bias_sigma)
        self._apply_motion(step.M, F, Q, a_cb, a_db)
        self.last_step = dyn.PredictStep(self._q_prev, dt, refreshed, step.M, F, Q, a_cb, a_db, self._step_aux())
        return step.contacts

    def motion_config(self) -> EKFConfig:
        """The config of the process model and the projection: while depth fits arrive (one within
        ``depth_fit_window`` seconds of prediction) with the ``depth_*`` in-contact noise and
        projection bound, else :attr:`cfg` itself."""
        c = self.cfg
        if self._since_fit > c.depth_fit_window:
            return c
        if self._cfg_with_fits is None or self._cfg_with_fits[0] is not c:  # (made once per cfg object)
            self._cfg_with_fits = (c, replace(c, pos_motion_random_walk=c.depth_pos_motion_random_walk,
                                              rot_motion_random_walk=c.depth_rot_motion_random_walk,
                                              projection_max_rot_sigma=c.depth_projection_max_rot_sigma))
        return self._cfg_with_fits[1]

    def _apply_motion(self, M: np.ndarray, F: np.ndarray, Q: np.ndarray, a_cb, a_db) -> None:
        """One step of the process model: the object by ``M`` ``(4, 4)`` (hand frame), the bias means
        by their decay factors (None: not decayed), the covariance by ``F``, ``Q`` ``(n, n)``."""
        self.T_ho = M @ self.T_ho
        if a_cb is not None:
            self.center_bias = a_cb * self.center_bias
        if a_db is not None:
            self.depth_bias = a_db * self.depth_bias
        self.P = kf.predict_covariance(self.P, F, Q)
        self._check_lost()

    def _check_lost(self) -> None:
        if self.state != TrackState.TRACKING:
            return
        reason = track_policy.lost_reason(self.cfg, self.rejections, lambda: self.covariance_trace)
        if reason is not None:
            self.state, self.message = TrackState.LOST, reason

    # joint and contact bookkeeping a prediction leaves behind
    _STEP_AUX = ("_q_prev", "_T_links", "_velocity", "_mask", "_mask_age", "contact_count", "last_motion")

    def _step_aux(self) -> dict:
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k in self._STEP_AUX for v in (getattr(self, k),)}

    def rerun(self, steps: list) -> None:
        """Make recorded :meth:`predict` steps (``last_step`` of each) again on the current estimate,
        as predicting with their joint vectors would: a step that refreshed the contact set is
        predicted anew (the set at this estimate can differ), and so is every step while the set
        differs from the recorded one; the others apply their recorded motion, ``F`` and ``Q``
        (the centre-bias noise at the current spread) without kinematics or distance queries. An
        out-of-sequence update re-runs the frames after it this way. ``(4, 4)`` entries are hand-base
        moves (:meth:`set_hand_base`), made again in their place."""
        for step in steps:
            if isinstance(step, np.ndarray):   # a hand-base move (/tf) recorded between joint steps
                self.set_hand_base(step)
                continue
            if step.refreshed or step.M is None or self._mask is None or not np.array_equal(self._mask, step.aux["_mask"]):
                self.predict(step.q, step.dt)
                continue
            Q = step.Q
            if step.a_cb is not None:  # the centre-bias noise at the current spread
                Q = Q.copy()
                Q[self._cb, self._cb] = np.diag(self.center_bias_sigma ** 2 * (1.0 - step.a_cb ** 2))
            for k, v in step.aux.items():
                setattr(self, k, v.copy() if isinstance(v, np.ndarray) else v)
            self._apply_motion(step.M, step.F, Q, step.a_cb, step.a_db)

    # ------------------------------------------------------------------ physics: penetration
    def hand_surface_points(self) -> np.ndarray:
        """All hand surface samples ``(N, 3)`` in the hand frame at the last joint vector."""
        if self._T_links is None:
            raise RuntimeError("no joint state yet: call predict() or initialize(q=...) first")
        return self.kin.surface_points(self._T_links)

    def hand_signed_distance(self, p_hand: np.ndarray, T_hand_obj: Optional[np.ndarray] = None):
        """Signed distance ``(M,)`` [m, negative inside] of hand-frame points ``(M, 3)`` to the object
        at ``T_hand_obj`` (default: the estimate), and the outward normals ``(M, 3)`` in the hand frame."""
        return penetration.signed_distance(self.sdf, p_hand, self.T_ho if T_hand_obj is None else T_hand_obj)

    def penetration_jacobian(self, p_hand: np.ndarray, normals_hand: np.ndarray,
                             T_hand_obj: Optional[np.ndarray] = None) -> np.ndarray:
        """``d sdf / d state`` ``(M, n)`` (:func:`hp_ros.core.ekf.penetration.penetration_jacobian`) at
        ``T_hand_obj`` (default: the estimate)."""
        return penetration.penetration_jacobian(p_hand, normals_hand, self.T_ho if T_hand_obj is None else T_hand_obj,
                                                self.n)

    def project_out_of_penetration(self, iterations: Optional[int] = None) -> ProjectionResult:
        """The pose to publish: the estimate moved out of penetration, so that no hand surface point
        is deeper than ``penetration_tolerance`` inside the object (physics prior as a constraint);
        call after the frame's updates. The result's ``T_cam_obj`` is also :attr:`T_cam_obj_published`
        until the state changes. How and when: :func:`hp_ros.core.ekf.penetration.project_estimate`."""
        return penetration.project_estimate(self, iterations)

    @property
    def covariance_published(self) -> np.ndarray:
        """``(6, 6)`` mean squared error of :attr:`T_cam_obj_published`: the filter's covariance plus
        ``d d^T`` with ``d`` the projection's shift of the pose (camera frame, apply_delta
        convention) - the projected pose is the filter's estimate moved by a known offset, so about
        the truth its error is the filter's error plus that offset (variance + bias^2)."""
        d = pose_error(self.T_cam_obj_published, self.T_cam_obj)
        return self.covariance + np.outer(d, d)

    @property
    def T_cam_obj_published(self) -> np.ndarray:
        """The pose to publish ``(4, 4)``: the last :meth:`project_out_of_penetration` result while
        the estimate has not changed since, else :attr:`T_cam_obj`."""
        pub = getattr(self, "_published", None)
        if pub is not None and np.array_equal(pub[0], self.T_ho) and np.array_equal(pub[1], self.T_ch):
            return pub[2].copy()
        return self.T_cam_obj

    def recentred_pose(self, u: float, v: float, depth: float) -> np.ndarray:
        """The estimate ``T_cam_obj`` ``(4, 4)`` moved (rotation kept, filter state untouched) so that
        its visible-centre model predicts the observed mask centroid ``(u, v)`` [px] and median
        depth [m]. A lost track's estimate can be centimetres off, beyond what a local refinement
        recovers; the observation says where the object is."""
        if self.K is None:
            raise ValueError("recentred_pose needs the camera intrinsics")
        if not all(math.isfinite(x) for x in (u, v, depth)) or depth <= 0:
            raise ValueError(f"recentred_pose needs a finite centroid and a positive depth, got {(u, v, depth)}")
        T = self.T_cam_obj.copy()
        off = self.visible_center_offset(T)
        z = depth - off[2]
        c_new = z * (np.linalg.inv(self.K) @ np.array([u - off[0], v - off[1], 1.0]))
        c_old = T[:3, :3] @ self.center_obj + T[:3, 3]
        T[:3, 3] += c_new - c_old
        return T

    def nees(self, T_cam_obj_true: np.ndarray) -> float:
        """Normalised estimation error squared of the 6-DoF camera pose against ground truth."""
        e = pose_error(np.asarray(T_cam_obj_true, dtype=np.float64), self.T_cam_obj)
        return float(e @ np.linalg.solve(self.covariance, e))
