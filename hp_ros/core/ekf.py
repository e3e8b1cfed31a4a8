"""Extended Kalman Filter tracking of an object held by the hand (HandyPriors filtering, ROS-free).

State and design
----------------
The robot hand's joint angles are *measured* (``/joint_states``) and its base pose in the camera
comes from a calibration ``T_cam_hand_pub`` that may be slightly wrong. The filter therefore keeps

* ``T_hand_obj`` ``(4, 4)``: the object pose in the **hand base frame** (the quasistatic
  dynamics act here, independent of the calibration), and
* optionally (``estimate_calibration=True``) ``T_cam_hand`` ``(4, 4)``: the camera->hand
  transform, initialised with the published calibration and corrected by the observations.

The estimate users get is ``T_cam_obj = T_cam_hand @ T_hand_obj``. Errors are in the
:func:`hp_ros.core.se3.apply_delta` convention (``xi = (v, w)``, translation error in the parent
frame, rotation error about the child's origin expressed in the parent frame), for both blocks:
the internal error state is ``[xi_hand_obj (6), xi_cam_hand (6)]`` (12, or the first 6 when the
calibration is not estimated). :attr:`EKFTracker.covariance` maps it to the 6x6 covariance of
``T_cam_obj`` in the same convention (order x, y, z, rx, ry, rz — what PoseWithCovariance wants).

Prediction (control input = joint angles): hand contact candidates (``HandModel.contact_candidates``)
within ``contact_threshold`` of the object surface (signed distance from :class:`MeshSDF`) are the
contacts (on at least ``min_contact_bodies`` fingers/palm: one approaching finger pushes, it
does not carry the object); with >= 3 non-collinear contacts the object follows their Kabsch motion from the previous
to the current joint configuration (:mod:`hp_ros.core.quasistatic`); with fewer contacts the
translation of their centroid only; without contacts it holds still (or keeps its last velocity,
``out_of_contact="constant_velocity"``). ``F = blockdiag(M_R, M_R, I6)`` (closed form). Process
noise grows with time, with the motion and with the residual of the rigid fit.
The threshold defaults to 4 mm, not the paper's 1 mm: the tracked pose is itself a few mm off,
and a too-small threshold finds no contacts and lets the object drift away from the moving hand.

What the observations correct
-----------------------------
* **Fingertips (2D pixels or 3D)** are points *of the hand*: ``h = pi(T_cam_hand @ tip(q))``. The
  joint angles are measured, so the only unknown they can correct is the camera->hand transform:
  with ``estimate_calibration=True`` they estimate it, and the object (held in the hand frame)
  moves with it in the camera frame — this is how "fingertips only" improves the object in our
  robot setting (in the paper the hand pose itself is the state). With ``estimate_calibration=False``
  fingertip observations carry no information about the object and are ignored (counted).
* **Object centre**: the mask centroid pixel ``(u, v)`` and the median depth inside the mask.
  Both belong to the *visible* surface, not to the model centre ``c``: the model is
  ``h = (pi(c), z(c)) + offset`` with the offset of the visible-surface centroid / median depth
  from the projected centre computed from back-face-culled, footprint-weighted surface samples at
  the current estimate (:meth:`EKFTracker.visible_center_offset`; its rotation dependence is
  statistically linearised, see :meth:`EKFTracker.center_model`), plus an estimated **bias**
  ``b`` (3 extra states, ``center_bias_*``): finger occlusion and the median-depth model leave an
  error correlated over ~0.5 s that white noise cannot describe (the filter would explain it by a
  rotation, see the tuning notes). ``b`` is a first-order Gauss-Markov process (correlation time
  ``center_bias_time``) whose stationary sigma is ``center_bias_fraction`` x the spread of the
  visible surface (footprint-weighted std of its pixels u, v and of its depth: the occluded or
  mis-modelled share of the mask moves the centroid / median in proportion to the object's
  apparent extent), with a floor. A 3D variant (``update_center_3d``) uses a
  back-projected point.
* **Pose** (silhouette refinement / renderer): ``z = T_cam_obj`` measured, residual
  ``(t_z - t, log(R_z R^T))``, H = the map from the internal error state to the camera error
  times the inverse right Jacobian of SO(3) at the rotation residual (:meth:`EKFTracker.pose_model`).
* **Depth fit** (:meth:`EKFTracker.update_depth_pose`): the ``model`` segmentation backend's robust
  ICP of the object model to the depth image (:class:`hp_ros.core.segmentation.ModelObjectMasker`)
  is a pose measurement that carries rotation. Its noise is the ICP's own covariance (normal
  matrix and residual variance, :func:`hp_ros.core.segmentation.icp_pose_covariance`) scaled by
  ``depth_cov_scale`` plus a white floor (``depth_pos_sigma``, ``depth_rot_sigma``), and optionally
  a Gauss-Markov bias of the fitted pose (``depth_bias_*``, 6 states); a fit is ignored below
  ``depth_min_confidence`` (its depth agreement; 0 always). Measured noise: see the tuning notes.

Physics after the updates: :meth:`EKFTracker.project_out_of_penetration` gives the pose to
publish (:attr:`EKFTracker.T_cam_obj_published`): the estimate moved so that no hand surface
sample (all of them, not only the contact candidates: a knuckle can be inside a wrongly turned box
too) is deeper than ``penetration_tolerance`` inside the object - an estimate projection onto the
linearised constraints of the Warp SDF in the metric of ``P^-1`` (constrained Kalman filtering),
re-linearised ``projection_iterations`` times. It is an output step: the filter state and ``P``
are not changed (fed back, it fought the depth fit, see the method's notes).

All Jacobians are closed form (checked against finite differences in ``test/test_ekf.py``).
Each update is gated on its normalised innovation squared (chi-square quantile at
``gate_probability``); the track is LOST after ``lost_after_rejections`` consecutive rejections or
when the pose covariance trace exceeds ``max_covariance_trace``.

Tuning (values measured, same for every object; reproduce with ``benchmarks/bench_ekf.py``)
------------------------------------------------------------------------------------
Measured on 8 synthetic 10 s sequences per object (cracker box, soup can) with the bench's
observations (ray-cast visible mask + depth noise + 2 px centroid noise), 'both' variant:

* before (white centre noise 2.5 px / 2.3 mm, nearly constant bias): mean NEES box 7.1 (6 DoF),
  can 3.6 (5 DoF). Split: box translation 4.0 / rotation 3.8 (3 each), can 1.9 / 1.9 (3 / 2).
  The box's excess sat in the in-hand rotation phase (t > 3.8 s): its rotation error about the
  camera y axis swung to 100-300 mrad (seeds 4, 5) with the filter's sigma at 50 mrad. Dynamics
  only and fingertips only kept it at the initial draw (~50 mrad), centre only reproduced it:
  the centre update read the unmodelled occlusion / median-depth error as a rotation through
  the visible offset's rotation dependence.
* centre residual at the true pose: u, v ~2.0 px white (the bench's noise); depth per frame
  0.48 mm (box) / 0.23 mm (can) rms with autocorrelation 0.5-0.75 at lag 3, ~0.5 at 10 and
  ~0.2 at 30 frames (box) -> correlation time ~0.5 s; the depth spread of the visible surface is
  ~48 mm (box) / ~22 mm (can): the correlated depth error is ~1 % of the spread for both
  objects, the long-run (1 s window) error 2.2 mm / 0.7 mm. Hence ``center_depth_sigma`` =
  0.5 mm white + the Gauss-Markov bias (``center_bias_time = 0.5``, ``center_bias_fraction = 0.01``,
  the measured figure; box depth bias ~0.5 mm, can ~0.2 mm).
* dynamics from the exact initial pose: out of contact the object rests (``free_*_random_walk``
  2 mm / 10 mrad per sqrt(s), 5 mm / 20 mrad was 3-50x too much); in contact with exact inputs
  the rotation error stays 10-25 mrad over +-130 mrad of in-hand rotation (0.5-1.1 rad turned in
  all, 40-60 mm travelled). That error is systematic (slip / rolling of the Kabsch-of-contacts
  motion), so the in-contact process noise is a random walk *in the motion variable*: variance
  ``rot_motion_random_walk^2 x angle turned`` and ``pos_motion_random_walk^2 x distance
  travelled``. Fitted (error increment^2 from t = 3.8 s over 3 x the distance / angle, 6 seeds):
  0.013 rad/sqrt(rad) (box; the can's figure includes its unobservable spin), 3.6 mm/sqrt(m) (both
  objects). The earlier per-step ``(fraction x step)^2`` added ~2 mrad over the whole rotation
  (variance ~ A^2 / N at N steps): the predicted sigma did not grow at all.
  With the bench's noisy encoders the dynamics-only error grows a little more (max 21-46 mrad,
  2-5 mm), but the predicted growth in contact is several times larger (fit-residual term ~20
  mrad/sqrt(s), and encoder jitter inflates the distance / angle travelled 6-8x); bringing it down
  to the measured growth (``fit_residual_weight`` 0.05, 2.3 mm/sqrt(m), 7 mrad/sqrt(rad)) brought
  the can to 5.4 (fraction 0.01) - 4.2 (0.03) but made the box over-confident (14.9 at 0.01, 7.4
  at 0.03, 4.7 at 0.04, 6.7 at 0.035: its excess comes from the centre update, not from the
  dynamics; per-run values jump by 2x between neighbouring fractions), so it is not the default.
Random-walk motion noise with ``center_bias_fraction`` 0.01 (8 seeds): box 7.1, can 3.5, pooled 5.8,
ensemble steps in band 70 %. Two changes then brought both objects in (6 seeds, ``--set`` of the
bench):
* **Schmidt centre update** (``center_corrects_rotation = False``): the centre update's gain rows
  of the rotation states (object and calibration) are zeroed; the Joseph form keeps P right for
  that gain. The centre cannot tell a rotation from its own occlusion / median-depth model error,
  so it no longer converts that error into rotation: box 7.49 -> 5.91, ADD-S 0.387 -> 0.368 cm;
  the can stays at 3.25 (its excess was translation).
* **In-contact growth at the measured size**: ``fit_residual_weight`` 0.2 -> 0.1,
  ``pos_motion_random_walk`` 3.6 -> 2.3 mm/sqrt(m) (``rot_motion_random_walk`` stays at the measured
  0.013): can 3.25 -> 4.60 (5 DoF), box 6.60 (6 DoF), pooled 6.11 in [5.88, 6.12], ADD-S 0.346 cm.
  Neighbours: fit weight 0.05 (+ 7 mrad/sqrt(rad)) box 7.71 / can 5.11; 0.05 box 7.41 / can 4.90;
  0.11 box 7.23 / can 4.28 (pooled 6.28); 0.12 box 6.63 / can 4.18 (pooled 5.90).
Result with the defaults: 6 seeds box 6.60, can 4.60, pooled 6.11 (band [5.88, 6.12]); 8 seeds
box 6.70, can 4.58, pooled 6.15 (band [5.90, 6.10]); ensemble steps in band 62-64 %. The figures
move by +-5 % between neighbouring settings (0.10 / 0.11 / 0.12 above are not monotonic): gating
decisions and the barely observed rotation make the per-run means spread 1-14, so the
pooled-frames band (+-2 %) resolves this filter's consistency only to about +-5 %.
Open: the box's runs 4 and 5 (NEES 13.9 / 8.2) and the can's under-confident lateral translation
(e^2 / sigma^2 0.4-0.8 per axis).

Depth fit and penetration (issue 15; ``bench_ekf.py`` variant ``+depth``, 6 seeds x 2 objects,
3,588 fits of the ``model`` backend on the generator's noisy ray-cast depth): per axis the ICP
sigma equals the fits' frame-to-frame (white) error (box 0.01-0.05 mm, 0.20-0.28 mrad; can 0.02
mm, 0.44-0.68 mrad of tilt), hence ``depth_cov_scale`` 1; on top a slowly varying offset of
0.05-0.07 mm (mostly along the view axis: the trilinear SDF grid) and 0.1-0.16 mrad that the
white ICP covariance misses (NEES/dof of the fits under it: 3.4 box, 2.3 can) - modelled as a
Gauss-Markov bias of the fitted pose (``depth_bias_*``, 0.047 mm / 0.18 mrad: pooled NEES 6.00 in
the band 5.88-6.12, box 7.42 of 6, can 3.59 of 5; 0.045 mm gave 6.12, 0.05 mm / 0.2 mrad 5.74,
0.04 / 0.15 6.59) plus a small white floor. In frames with an accepted fit the
centre update is skipped (same depth pixels). The projection out of penetration is an output
step (:meth:`EKFTracker.project_out_of_penetration`): fed back it fought these fits.

Numerics: the filter algebra is float64 numpy (tiny matrices, no autograd on the hot path); the
hand model and the SDF are torch/Warp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np
import torch
from scipy.stats import chi2

from hp_ros.core import se3
from hp_ros.core.quasistatic import ContactMotion, contact_mask, rigid_motion_from_contacts

__all__ = ["EKFConfig", "EKFTracker", "TrackState", "UpdateResult", "ProjectionResult", "skew", "apply_delta_np",
           "so3_right_jacobian_inv",
           "pose_error", "propagate_jacobian", "point_jacobian", "project", "camera_error_map",
           "symmetry_axis", "normalized_error_squared"]


class TrackState:
    """Tracking states (same values as ``hp_ros_msgs/TrackingStatus``)."""

    INITIALIZING = 0
    TRACKING = 1
    LOST = 2
    NAMES = {0: "INITIALIZING", 1: "TRACKING", 2: "LOST"}


@dataclass
class EKFConfig:
    """Tuning of :class:`EKFTracker` (units: m, rad, s, pixels)."""

    estimate_calibration: bool = True      # estimate a camera->hand correction (fingertips need it)
    contact_threshold: float = 0.004       # hand point within this distance of the surface = contact
    max_penetration: float = 0.02          # deeper "contacts" are ignored (wrong pose)
    min_contacts: int = 3                  # fewer: translation only
    min_contact_bodies: int = 2            # contacts on fewer bodies (fingers / palm): a push, not a grasp -> hold
    min_spread: float = 0.005              # second principal spread of contacts for a rotation [m]
    out_of_contact: str = "hold"           # hold | constant_velocity
    velocity_decay: float = 2.0            # 1/s, constant-velocity model decay
    contact_refresh: float = 0.05          # s between contact-set queries on the SDF (reused in between)
    # process noise (standard deviations)
    pos_random_walk: float = 0.0005        # m / sqrt(s)
    rot_random_walk: float = 0.003         # rad / sqrt(s)
    # slip / rolling error of the contact motion: a random walk in the motion variable (variance grows
    # with the distance / angle travelled, not with time; measured with exact inputs, see module doc)
    pos_motion_random_walk: float = 0.0023  # m / sqrt(m travelled)
    rot_motion_random_walk: float = 0.013   # rad / sqrt(rad turned)
    fit_residual_weight: float = 0.1       # x RMS residual of the rigid contact fit (per step; encoder
                                           # noise in it largely cancels between steps, so not 1)
    free_pos_random_walk: float = 0.002    # m / sqrt(s), out of contact (measured: the untouched
    free_rot_random_walk: float = 0.01     # rad / sqrt(s)   object rests; 5 mm / 20 mrad was 3-50x too much)
    calib_pos_random_walk: float = 0.0002  # m / sqrt(s)
    calib_rot_random_walk: float = 0.0005  # rad / sqrt(s)
    # initial uncertainty
    init_pos_sigma: float = 0.01
    init_rot_sigma: float = 0.05
    calib_pos_sigma: float = 0.002         # prior on the published calibration (per axis)
    calib_rot_sigma: float = 0.006
    # observation noise
    fingertip_px_sigma: float = 3.0
    fingertip_3d_sigma: float = 0.005
    fingertip_offset: float = 0.0          # tip point along the fingertip link's z axis [m]
    center_px_sigma: float = 2.5           # white part of the centroid / median-depth error (measured,
    center_depth_sigma: float = 0.0005     # see the module doc); the correlated part is the bias state
    center_3d_sigma: float = 0.008
    # error of the visible-centre model (finger occlusion, depth median) correlated over ~0.5 s: a
    # first-order Gauss-Markov state, not white noise the filter could average away. Its stationary
    # sigma scales with the visible surface's spread (pixels u, v; depth), with a floor.
    center_bias_px_sigma: float = 0.3             # px, floor
    center_bias_depth_sigma: float = 0.0002       # m, floor
    center_bias_fraction: float = 0.01            # x spread of the visible surface (u, v [px], depth [m])
    center_bias_time: float = 0.5                 # s, correlation time (0: constant per track)
    center_rotation: str = "model"         # model | consider: visible-centre offset's rotation dependence
    center_corrects_rotation: bool = False  # True: the centre update may also turn the object and the
    #                                         calibration (measured: it turns model error into rotation)
    pose_pos_sigma: float = 0.01
    pose_rot_sigma: float = 0.05
    # depth fit of the model segmentation backend (update_depth_pose): R = depth_cov_scale^2 x its
    # ICP covariance + a white floor (measured against ground truth, see the module doc)
    depth_cov_scale: float = 1.0           # measured: the ICP sigma per axis = the fits' white error
    depth_pos_sigma: float = 0.00001       # m per axis, white floor (synthetic depth: see the module doc;
    depth_rot_sigma: float = 0.00005       # rad per axis   a real sensor needs far more)
    depth_min_confidence: float = 0.3      # fits with a lower depth agreement are ignored (0: always ignored)
    # error of the depth fit correlated over frames (model / occlusion / view dependent): a first-order
    # Gauss-Markov bias of the fitted pose (6 states; both sigmas 0 = no such states)
    depth_bias_pos_sigma: float = 0.000047  # m per axis, stationary (measured offset of the fits 0.05-0.07 mm)
    depth_bias_rot_sigma: float = 0.00018  # rad per axis, stationary (measured 0.1-0.16 mrad)
    depth_bias_time: float = 2.0           # s, correlation time (measured: no decay within 1 s)
    # physics: after the updates the estimate is projected out of penetration (project_out_of_penetration)
    penetration_tolerance: float = 0.0005  # m, hand points deeper than this inside the object are pushed out
    projection_iterations: int = 5         # re-linearisations of the projection (SDF queries; a pinch needed 5)
    projection_max_rot_sigma: float = 0.01  # rad: project only when the orientation is known this well (2nd
    #                                         largest rotation sigma: a body of revolution's spin is free).
    #                                         Measured in the demo without the depth fit (~3 deg sigma):
    #                                         the smallest move out of the modelled fingers is a turn that
    #                                         pushed the true fingers 25 mm in (6 mm unprojected)
    projection_feedback: bool = False      # True: the projected pose becomes the filter state (measured:
    #                                        the NIS gate then rejects the depth fits, see project_out_of_penetration)
    projection_corrects_calibration: bool = False  # with feedback: the projection may also move the
    #                                                camera->hand estimate (measured: it walks away)
    # gating / lost track
    gate_probability: float = 0.999
    lost_after_rejections: int = 15
    max_covariance_trace: float = 0.05     # m^2 + rad^2

    def __post_init__(self):
        if self.center_rotation not in ("model", "consider"):
            raise ValueError(f"center_rotation must be 'model' or 'consider', got {self.center_rotation!r}")
        if self.out_of_contact not in ("hold", "constant_velocity"):
            raise ValueError(f"out_of_contact must be 'hold' or 'constant_velocity', got {self.out_of_contact!r}")
        if not 0.0 < self.gate_probability < 1.0:
            raise ValueError(f"gate_probability must be in (0, 1), got {self.gate_probability}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and f.name != "fingertip_offset" and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{f.name} must be a finite value >= 0, got {v}")
        if self.contact_threshold <= 0:
            raise ValueError("contact_threshold must be > 0")
        if int(self.projection_iterations) != self.projection_iterations or self.projection_iterations < 0:
            raise ValueError(f"projection_iterations must be an integer >= 0, got {self.projection_iterations}")

    @classmethod
    def from_dict(cls, values: dict) -> "EKFConfig":
        """Config from a dict, ignoring keys that are not config fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class UpdateResult:
    """Outcome of one measurement update."""

    kind: str
    accepted: bool
    nis: float
    gate: float
    dim: int
    reason: str = ""


@dataclass
class ProjectionResult:
    """Outcome of :meth:`EKFTracker.project_out_of_penetration` (depths in metres, >= 0)."""

    moved: bool             # the estimate was changed
    depth_before: float     # deepest hand point inside the object before the projection (0 when the
    #                         bounding-box test already rules out more than the tolerance: no SDF query)
    depth_after: float      # ... after it
    iterations: int         # linearised projection steps taken
    active: int = 0         # hand points constrained in the last step
    shift: float = 0.0      # distance the object moved in the hand frame [m]
    T_cam_obj: Optional[np.ndarray] = None  # (4, 4) the pose to publish


def _refused(kind: str, reason: str, dim: int = 0) -> UpdateResult:
    """An update that was not applied (no NIS computed)."""
    return UpdateResult(kind, False, float("nan"), float("nan"), dim, reason)


# ----------------------------------------------------------------------------- small SE(3) algebra (numpy)

def skew(a: np.ndarray) -> np.ndarray:
    """``(3,)`` -> ``(3, 3)`` cross-product matrix."""
    return np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])


def _so3_exp(w: np.ndarray) -> np.ndarray:
    th = float(np.linalg.norm(w))
    K = skew(w)
    if th < 1e-9:
        return np.eye(3) + K
    return np.eye(3) + math.sin(th) / th * K + (1 - math.cos(th)) / th ** 2 * (K @ K)


def _so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector of ``(3, 3)`` ``R`` (numpy: this runs on every predict; torch/roma calls cost
    more than the maths for one matrix). Near pi it falls back to :func:`se3.so3_log`."""
    c = (np.trace(R) - 1.0) / 2.0
    if c < -0.99:
        return se3.so3_log(torch.as_tensor(R, dtype=torch.float64)).numpy()
    th = math.acos(min(1.0, c))
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    s = th / (2.0 * math.sin(th)) if th > 1e-6 else 0.5 + th * th / 12.0
    return s * v


def apply_delta_np(T: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """:func:`hp_ros.core.se3.apply_delta` on ``(4, 4)`` float64: ``R' = exp(w) R``, ``t' = t + v``."""
    out = np.eye(4)
    out[:3, :3] = _so3_exp(xi[3:6]) @ T[:3, :3]
    out[:3, 3] = T[:3, 3] + xi[:3]
    return out


def pose_error(T_true: np.ndarray, T_est: np.ndarray) -> np.ndarray:
    """Error ``xi`` ``(6,)`` with ``T_true = apply_delta(T_est, xi)`` (translation, rotation vector)."""
    return np.concatenate([T_true[:3, 3] - T_est[:3, 3], _so3_log(T_true[:3, :3] @ T_est[:3, :3].T)])


def so3_right_jacobian_inv(phi: np.ndarray) -> np.ndarray:
    """``(3, 3)`` inverse right Jacobian of SO(3) at the rotation vector ``phi`` ``(3,)``:
    ``log(exp(phi) exp(d)) = phi + J_r^-1(phi) d + O(d^2)``."""
    th = float(np.linalg.norm(phi))
    K = skew(phi)
    if th < 1e-6:
        return np.eye(3) + 0.5 * K + (K @ K) / 12.0
    c = 1.0 / th ** 2 - (1.0 + math.cos(th)) / (2.0 * th * math.sin(th))
    return np.eye(3) + 0.5 * K + c * (K @ K)


def propagate_jacobian(M: np.ndarray) -> np.ndarray:
    """``F`` ``(6, 6)`` of ``T' = M @ T`` w.r.t. the apply_delta error of ``T``: blockdiag(R_M, R_M)."""
    F = np.zeros((6, 6))
    F[:3, :3] = M[:3, :3]
    F[3:, 3:] = M[:3, :3]
    return F


def point_jacobian(T: np.ndarray, p_child: np.ndarray) -> np.ndarray:
    """``d (T p) / d xi`` ``(3, 6)`` for ``T`` perturbed by apply_delta, ``p_child`` ``(3,)``."""
    J = np.zeros((3, 6))
    J[:, :3] = np.eye(3)
    J[:, 3:] = -skew(T[:3, :3] @ p_child)
    return J


def project(K: np.ndarray, p: np.ndarray):
    """Pinhole projection of camera points ``(N, 3)`` -> pixels ``(N, 2)`` and ``d uv / d p`` ``(N, 2, 3)``."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    uv = np.stack([fx * x / z + cx, fy * y / z + cy], -1)
    J = np.zeros((p.shape[0], 2, 3))
    J[:, 0, 0] = fx / z
    J[:, 0, 2] = -fx * x / z ** 2
    J[:, 1, 1] = fy / z
    J[:, 1, 2] = -fy * y / z ** 2
    return uv, J


def camera_error_map(T_cam_hand: np.ndarray, T_hand_obj: np.ndarray, with_calibration: bool) -> np.ndarray:
    """``G`` ``(6, 6 or 12)``: error of ``T_cam_obj = T_cam_hand T_hand_obj`` from the internal errors.

    Object block: ``(v, w)_cam = (R_ch v, R_ch w)``; calibration block:
    ``v_cam = v_c - [R_ch t_ho]x w_c``, ``w_cam = w_c``.
    """
    R = T_cam_hand[:3, :3]
    G = np.zeros((6, 12 if with_calibration else 6))
    G[:3, :3] = R
    G[3:, 3:6] = R
    if with_calibration:
        G[:3, 6:9] = np.eye(3)
        G[:3, 9:12] = -skew(R @ T_hand_obj[:3, 3])
        G[3:, 9:12] = np.eye(3)
    return G


# ----------------------------------------------------------------------------- the filter

class EKFTracker:
    """EKF on the object pose (+ camera->hand correction). See the module docstring.

    ``hand``: :class:`hp_ros.core.hand.HandModel`; ``obj``: :class:`hp_ros.core.objects.ObjectModel`;
    ``K`` ``(3, 3)`` camera matrix (may be set later with :meth:`set_camera`);
    ``T_cam_hand`` ``(4, 4)`` published calibration; ``object_sdf``: a prebuilt
    :class:`hp_ros.core.sdf.MeshSDF` (built from ``obj`` when None).
    """

    def __init__(self, hand, obj, K: Optional[np.ndarray], T_cam_hand: np.ndarray,
                 config: Optional[EKFConfig] = None, object_sdf=None):
        from hp_ros.core.sdf import MeshSDF

        self.hand, self.obj = hand, obj
        self.cfg = config or EKFConfig()
        self.K = None if K is None else self._check_K(K)
        self.T_cam_hand_pub = self._check_pose(T_cam_hand, "T_cam_hand")
        self.sdf = object_sdf if object_sdf is not None else MeshSDF(obj.vertices, obj.faces)
        v = obj.vertices.double()
        self.center_obj = ((v.min(0).values + v.max(0).values) / 2).numpy()  # model (bbox) centre
        self._diameter = float((v.max(0).values - v.min(0).values).norm())
        self._box_lo, self._box_hi = v.min(0).values.numpy(), v.max(0).values.numpy()  # object frame
        self._vis_pts, self._vis_nrm, self._vis_area = self._visibility_samples(obj)
        cand = hand.contact_candidates
        self._cand_pts = hand.local_surface_points[cand].double().numpy()   # (K, 3) in their links
        self._cand_links = hand.point_link_ids[cand].numpy()                # (K,)
        # body of each candidate: finger 0-3 (thumb, index, middle, ring), -1 palm/base
        finger = np.full(hand.num_links, -1)
        for i, ln in enumerate(hand.link_names):
            f = hand.naming.parse_link(ln)
            if isinstance(f, tuple):
                finger[i] = f[0]
        self._cand_body = finger[self._cand_links]
        # all hand surface samples (N, 3) in their links, for the penetration projection: a knuckle
        # or the back of a finger can be inside a wrongly posed object as well as a finger pad
        self._surf_pts = hand.local_surface_points.double().numpy()
        self._surf_links = hand.point_link_ids.numpy()
        try:  # numpy copies of the hand model's FK factors (see _forward_kinematics)
            f = hand._np
            self._fk_factors = (f["O"], f["OA"], f["OB"], f["OC"], np.asarray(hand._q_index),
                                [(np.asarray(m), np.asarray(p)) for m, p in hand._levels], np.asarray(hand._inv_order))
        except (AttributeError, KeyError):
            self._fk_factors = None
        self._gates = {}  # NIS gate per measurement dimension (chi2.ppf costs ~0.7 ms)
        self.calib = bool(self.cfg.estimate_calibration)
        self.n_pose = 12 if self.calib else 6          # object (+ calibration) error state
        c = self.cfg
        self.bias = c.center_bias_px_sigma > 0 or c.center_bias_depth_sigma > 0 or c.center_bias_fraction > 0
        self.n = self.n_pose + (3 if self.bias else 0)  # + centre-observation bias (u, v, depth)
        self._cb = slice(self.n_pose, self.n)            # its indices
        self.depth_bias_on = c.depth_bias_pos_sigma > 0 or c.depth_bias_rot_sigma > 0
        self._db = slice(self.n, self.n + (6 if self.depth_bias_on else 0))  # + depth-fit pose bias (v, w)
        self.n = self._db.stop
        self._rotation_idx = np.array([3, 4, 5] + ([9, 10, 11] if self.calib else []))
        self.reset()

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
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
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
        self.contact_count = 0
        self.last_motion: Optional[ContactMotion] = None
        self.last_nis = float("nan")
        self.last_gate = float("nan")
        self._published = None        # (T_ho, T_ch, T_cam_obj) of the last projection, see T_cam_obj_published

    # what predict/update/initialize change: a snapshot of these is the whole filter state
    _DYNAMIC = ("state", "message", "T_ch", "T_ho", "P", "_q_prev", "_T_links", "_velocity", "center_consider_cov",
                "center_bias", "depth_bias", "center_spread", "_offset_jac", "_mask", "_mask_age", "rejections", "contact_count",
                "last_motion", "last_nis", "last_gate", "_published")

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
        self.rejections = 0
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
        q = np.asarray(q.detach().cpu() if torch.is_tensor(q) else q, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.hand.num_joints or not np.all(np.isfinite(q)):
            raise ValueError(f"joint vector must have {self.hand.num_joints} finite values, got {q.shape[0]}")
        return q

    def _forward_kinematics(self, q: np.ndarray) -> np.ndarray:
        """Link poses ``(L, 4, 4)`` float64 in the hand frame for one joint vector ``q`` ``(J,)``.

        The same closed form as :meth:`HandModel.forward_kinematics` (per-link factors
        ``O + sin q OA + (1 - cos q) OB + q OC``, composed level by level) in float64 numpy: at
        100 Hz with one configuration torch's per-op overhead cost ~0.5 ms, this ~0.05 ms.
        Falls back to the hand model's torch FK when it does not expose those factors."""
        fk = self._fk_factors
        if fk is None:
            qt = torch.as_tensor(q, dtype=self.hand.dtype)[None]
            return self.hand.forward_kinematics(qt)[0].double().numpy()
        O, OA, OB, OC, q_index, levels, inv_order = fk
        qs = q[q_index]
        local = O + np.sin(qs)[:, None, None] * OA + (1.0 - np.cos(qs))[:, None, None] * OB + qs[:, None, None] * OC
        world = local[levels[0][0]]
        out = [world]
        for members, parents in levels[1:]:
            world = world[parents] @ local[members]
            out.append(world)
        return np.concatenate(out)[inv_order]

    def _set_q(self, q) -> None:
        q = self._as_q(q)
        self._T_links = self._forward_kinematics(q)
        self._q_prev = q

    def _candidate_points(self, ids: Optional[np.ndarray] = None) -> np.ndarray:
        """Contact-candidate points ``(K or len(ids), 3)`` in the hand frame at the last joint vector."""
        pts, links = (self._cand_pts, self._cand_links) if ids is None else (self._cand_pts[ids], self._cand_links[ids])
        T = self._T_links[links]
        return np.einsum("kij,kj->ki", T[:, :3, :3], pts) + T[:, :3, 3]

    def contacts(self) -> torch.Tensor:
        """Bool ``(K,)``: which contact candidates touch the object at the current estimate."""
        T_oh = np.linalg.inv(self.T_ho)
        p_obj = self._candidate_points() @ T_oh[:3, :3].T + T_oh[:3, 3]
        sdf, _ = self.sdf.query(torch.as_tensor(p_obj, dtype=torch.float32)[None])
        return contact_mask(sdf[0], self.cfg.contact_threshold, self.cfg.max_penetration)

    def predict(self, q, dt: float) -> ContactMotion:
        """Propagate with the joint vector ``q`` ``(J,)`` measured ``dt`` seconds after the previous one."""
        if not self.initialized:
            raise RuntimeError("predict() before initialize()")
        if not (dt >= 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be finite and >= 0, got {dt}")
        if self._q_prev is None:
            self._set_q(q)
            return ContactMotion(np.eye(4), 0, False, 0.0, 0.0)
        c = self.cfg
        # the contact set changes slowly: query the SDF every contact_refresh seconds only
        if self._mask is None or self._mask_age >= c.contact_refresh:
            self._mask, self._mask_age = self.contacts(), 0.0
        self._mask_age += dt
        ids = np.nonzero(self._mask.numpy())[0]
        if len(np.unique(self._cand_body[ids])) < c.min_contact_bodies:
            ids = ids[:0]  # one finger near the object (approach) does not carry it
        p_prev = self._candidate_points(ids)
        self._set_q(q)
        motion = rigid_motion_from_contacts(p_prev, self._candidate_points(ids), min_contacts=c.min_contacts,
                                            min_spread=c.min_spread)
        self.contact_count = motion.n_contacts
        self.last_motion = motion
        M = motion.M
        if motion.n_contacts == 0:
            if c.out_of_contact == "constant_velocity" and dt > 0:
                self._velocity *= math.exp(-c.velocity_decay * dt)
                M = np.eye(4)
                M[:3, :3] = _so3_exp(self._velocity[3:] * dt)
                M[:3, 3] = self._velocity[:3] * dt
            sp2 = c.free_pos_random_walk ** 2 * dt
            sr2 = c.free_rot_random_walk ** 2 * dt
        else:
            if dt > 0:
                self._velocity = np.concatenate([M[:3, 3], _so3_log(M[:3, :3])]) / dt
            trans = float(np.linalg.norm(M[:3, 3]))
            ang = float(np.linalg.norm(_so3_log(M[:3, :3])))
            res = c.fit_residual_weight * motion.residual_rms
            # variance proportional to the motion (random walk in distance / angle travelled): the
            # Kabsch-of-contacts error is systematic and accumulates over a motion; a per-step
            # fraction in quadrature would shrink as 1/sqrt(steps) at a higher joint-state rate
            sp2 = c.pos_random_walk ** 2 * dt + c.pos_motion_random_walk ** 2 * trans + res ** 2
            sr2 = c.rot_random_walk ** 2 * dt + c.rot_motion_random_walk ** 2 * ang
            if motion.rotation_ok:
                sr2 += (res / max(motion.spread, 1e-3)) ** 2
            else:  # rotation unobserved by the contacts: it may roll about them (angle ~ travel / spread)
                sr2 += c.rot_motion_random_walk ** 2 * trans / max(motion.spread, 0.01) + c.free_rot_random_walk ** 2 * dt
        # x' = M x ; F = blockdiag(R_M, R_M, I)
        self.T_ho = M @ self.T_ho
        F = np.eye(self.n)
        F[:6, :6] = propagate_jacobian(M)
        Q = np.zeros((self.n, self.n))
        Q[:6, :6] = np.diag([sp2] * 3 + [sr2] * 3)
        if self.bias and c.center_bias_time > 0:  # Gauss-Markov: decays to 0, stationary sigma kept
            a = math.exp(-dt / c.center_bias_time)
            F[self._cb, self._cb] *= a
            self.center_bias = a * self.center_bias
            Q[self._cb, self._cb] = np.diag(self.center_bias_sigma ** 2 * (1.0 - a * a))
        if self.depth_bias_on and c.depth_bias_time > 0:
            a = math.exp(-dt / c.depth_bias_time)
            F[self._db, self._db] *= a
            self.depth_bias = a * self.depth_bias
            Q[self._db, self._db] = np.diag(self.depth_bias_sigma ** 2 * (1.0 - a * a))
        if self.calib:
            Q[6:12, 6:12] = np.diag([c.calib_pos_random_walk ** 2 * dt] * 3 + [c.calib_rot_random_walk ** 2 * dt] * 3)
        self.P = F @ self.P @ F.T + Q
        self._check_lost()
        return motion

    # ------------------------------------------------------------------ measurement models
    def fingertip_points_hand(self, q=None) -> np.ndarray:
        """Fingertip points ``(4, 3)`` in the hand frame (link origin + ``fingertip_offset`` along z)."""
        T = self._forward_kinematics(self._as_q(q)) if q is not None else self._T_links
        if T is None:
            raise RuntimeError("no joint state yet: call predict() or initialize(q=...) first")
        Tt = T[np.asarray(self.hand._tip_idx.cpu())]
        return Tt[:, :3, 3] + self.cfg.fingertip_offset * Tt[:, :3, 2]

    def _hand_point_model(self, p_hand: np.ndarray):
        """Camera points ``(N, 3)`` of hand points and ``d p / d state`` ``(N, 3, n)``."""
        p = p_hand @ self.T_ch[:3, :3].T + self.T_ch[:3, 3]
        H = np.zeros((len(p_hand), 3, self.n))
        if self.calib:
            for i in range(len(p_hand)):
                H[i, :, 6:12] = point_jacobian(self.T_ch, p_hand[i])
        return p, H

    def _object_point_model(self, p_obj: np.ndarray):
        """Camera point ``(3,)`` of an object-frame point and ``d p / d state`` ``(3, n)``."""
        p_h = self.T_ho[:3, :3] @ p_obj + self.T_ho[:3, 3]
        p = self.T_ch[:3, :3] @ p_h + self.T_ch[:3, 3]
        H = np.zeros((3, self.n))
        H[:, :6] = self.T_ch[:3, :3] @ point_jacobian(self.T_ho, p_obj)
        if self.calib:
            H[:, 6:12] = point_jacobian(self.T_ch, p_h)
        return p, H

    @staticmethod
    def _visibility_samples(obj, pieces: int = 24):
        """Surface elements of the object: centroids ``(n, 3)``, unit normals ``(n, 3)``, areas ``(n,)``
        of its faces subdivided to edges <= diameter / ``pieces`` (deterministic, ~1e4 elements)."""
        import trimesh

        v, f = obj.vertices.double().numpy(), obj.faces.numpy()
        size = float(np.linalg.norm(v.max(0) - v.min(0))) / pieces
        v, f = trimesh.remesh.subdivide_to_size(v, f, max_edge=size, max_iter=20)
        m = trimesh.Trimesh(v, f, process=False)
        return np.asarray(m.triangles_center), np.asarray(m.face_normals), np.asarray(m.area_faces)

    def visible_center_offset(self, T_cam_obj: Optional[np.ndarray] = None) -> np.ndarray:
        """``(du, dv, dz)``: visible-surface centroid pixel and median depth minus the projected
        model centre and its depth, at the current estimate.

        The segmentation measures the centroid of the *visible* mask and the median depth of the
        *visible* surface; both differ from the model centre (a can's visible half-cylinder lies
        in front of its axis, a box seen obliquely shows its nearer faces). Visibility is back-face
        culling of small surface elements (exact for convex objects), each weighted by its pixel
        footprint ``area cos(theta) / z^2``; the median is interpolated (smooth in the pose). Hand
        occlusion is not modelled (observation noise). ``T_cam_obj`` ``(4, 4)``: the pose to
        evaluate at (default: the estimate).
        """
        return self._visible_stats(self.T_cam_obj if T_cam_obj is None else T_cam_obj)[0]

    def _visible_stats(self, T: np.ndarray):
        """Offset ``(3,)`` (see :meth:`visible_center_offset`) and spread ``(3,)`` of the visible surface at
        ``T`` ``(4, 4)``: footprint-weighted standard deviations of its pixels (u, v) and depth."""
        p = self._vis_pts @ T[:3, :3].T + T[:3, 3]
        n = self._vis_nrm @ T[:3, :3].T
        dist = np.linalg.norm(p, axis=1)
        cos = -(n * p).sum(1) / dist
        w = np.where(cos > 0, self._vis_area * cos / p[:, 2] ** 2, 0.0)
        if w.sum() <= 0:
            return np.zeros(3), np.zeros(3)
        w = w / w.sum()
        uv, _ = project(self.K, p)
        c = T[:3, :3] @ self.center_obj + T[:3, 3]
        uv_c, _ = project(self.K, c[None])
        order = np.argsort(p[:, 2])
        cw = np.cumsum(w[order])
        z_med = float(np.interp(0.5, cw - 0.5 * w[order], p[order, 2]))
        uvz = np.column_stack([uv, p[:, 2]])
        mean = w @ uvz
        spread = np.sqrt(np.maximum(w @ (uvz - mean) ** 2, 0.0))
        return np.array([*(mean[:2] - uv_c[0]), z_med - c[2]]), spread

    def center_model(self, offset_eps: float = 1e-3):
        """``h = (u, v, depth)`` ``(3,)`` expected for the visible mask centroid / median depth, and
        ``H`` ``(3, n)``.

        The visible-surface offset depends on the pose (a turning box shows other faces; perspective).
        Its translation derivative is a forward difference (step ``offset_eps``; 0 = offset held
        constant). Its rotation dependence is strongly non-linear at the rotation uncertainties this
        filter carries (0.05-0.15 rad: a box's median depth moves by ~1 cm and not linearly), so it
        is *statistically* linearised (second-order EKF / sigma points): the offset is evaluated at
        +-1 sigma along the principal axes of the current rotation covariance; the central
        differences give the slope in ``H``, and the curvature ``c_k = (f+ + f- - 2 f0) / 2`` gives
        the expected second-order term (added to ``h``: ``sum c_k``) and its variance
        (:attr:`center_consider_cov` = ``2 sum c_k c_k^T``, added by :meth:`update_center`). Without
        this the filter treats a model error that persists for seconds as a precise measurement
        and becomes over-confident in rotation. Cached until the pose moved by more than 0.03 rad /
        5 mm (each offset evaluation costs ~0.5 ms). With ``center_rotation="consider"`` the
        rotation dependence only inflates the noise (``D_r P D_r^T``)."""
        p, Hp = self._object_point_model(self.center_obj)
        uv, Jp = project(self.K, p[None])
        T = self.T_cam_obj
        off, self.center_spread = self._visible_stats(T)
        h = np.array([uv[0, 0], uv[0, 1], p[2]]) + off + self.center_bias
        H = np.vstack([Jp[0] @ Hp, Hp[2:3]])
        if self.bias:
            H[:, self._cb] = np.eye(3)
        self.center_consider_cov = np.zeros((3, 3))
        if offset_eps <= 0:
            return h, H
        G = np.zeros((6, self.n))
        G[:, :self.n_pose] = camera_error_map(self.T_ch, self.T_ho, self.calib)
        cache = self._offset_jac
        if (cache is None or cache[2] != offset_eps or np.linalg.norm(pose_error(T, cache[0])[:3]) > 0.005
                or np.linalg.norm(pose_error(T, cache[0])[3:]) > 0.03):
            D = np.zeros((3, 6))  # d offset / d xi_cam (apply_delta convention)
            for k in range(3):
                d = np.zeros(6)
                d[k] = offset_eps
                D[:, k] = (self.visible_center_offset(apply_delta_np(T, d)) - off) / offset_eps
            shift, C = np.zeros(3), np.zeros((3, 3))
            if self.cfg.center_rotation == "model":
                P_rot = (G[3:] @ self.P @ G[3:].T)
                lam, V = np.linalg.eigh((P_rot + P_rot.T) / 2)
                for k in range(3):
                    step = float(np.clip(np.sqrt(max(lam[k], 0.0)), offset_eps, 0.3))
                    d = np.zeros(6)
                    d[3:] = step * V[:, k]
                    f_plus = self.visible_center_offset(apply_delta_np(T, d)) - off
                    f_minus = self.visible_center_offset(apply_delta_np(T, -d)) - off
                    D[:, 3:] += np.outer((f_plus - f_minus) / (2 * step), V[:, k])
                    ck = (f_plus + f_minus) / 2
                    shift += ck
                    C += 2 * np.outer(ck, ck)
            else:
                for k in range(3, 6):
                    d = np.zeros(6)
                    d[k] = offset_eps
                    D[:, k] = (self.visible_center_offset(apply_delta_np(T, d)) - off) / offset_eps
            self._offset_jac = cache = (T.copy(), D, offset_eps, shift, C)
        D = cache[1]
        if self.cfg.center_rotation == "model":
            # in H the filter keeps the translation-rotation correlation a rotation error creates
            # (as noise it would average a persistent error away)
            H = H + D @ G
            h = h + cache[3]
            self.center_consider_cov = cache[4]
        else:
            H = H + D[:, :3] @ G[:3]
            Dr = D[:, 3:] @ G[3:]
            self.center_consider_cov = Dr @ self.P @ Dr.T
        return h, H

    # ------------------------------------------------------------------ updates
    # observations of the object itself: only their rejections count towards LOST (a fingertip
    # update says nothing about whether the object is where the filter thinks)
    OBJECT_KINDS = ("center", "center_3d", "pose", "depth_pose")

    def _update(self, kind: str, r: np.ndarray, H: np.ndarray, R: np.ndarray,
                frozen: Optional[np.ndarray] = None) -> UpdateResult:
        """Gated update. ``frozen``: state indices this observation must not correct (their gain
        rows are zeroed - a Schmidt / consider update; the Joseph form keeps P right for that
        sub-optimal gain)."""
        if not self.initialized:
            return _refused(kind, "not initialised", len(r))
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(H))):
            return _refused(kind, "non-finite innovation", len(r))
        S = H @ self.P @ H.T + R
        try:
            Sinv_r = np.linalg.solve(S, r)
        except np.linalg.LinAlgError:
            return _refused(kind, "singular innovation covariance", len(r))
        nis = float(r @ Sinv_r)
        key = (self.cfg.gate_probability, len(r))
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = float(chi2.ppf(self.cfg.gate_probability, len(r)))
        self.last_nis, self.last_gate = nis, gate
        if nis > gate:
            if kind in self.OBJECT_KINDS:
                self.rejections += 1
            self._check_lost()
            return UpdateResult(kind, False, nis, gate, len(r), "gated")
        Kg = np.linalg.solve(S, H @ self.P).T  # P H^T S^-1 (S symmetric)
        if frozen is not None:
            Kg[frozen] = 0.0
        dx = Kg @ r
        A = np.eye(self.n) - Kg @ H
        self.P = A @ self.P @ A.T + Kg @ R @ Kg.T  # Joseph form
        self.P = (self.P + self.P.T) / 2
        self.T_ho = apply_delta_np(self.T_ho, dx[:6])
        if self.calib:
            self.T_ch = apply_delta_np(self.T_ch, dx[6:12])
        if self.bias:
            self.center_bias = self.center_bias + dx[self._cb]
        if self.depth_bias_on:
            self.depth_bias = self.depth_bias + dx[self._db]
        if kind in self.OBJECT_KINDS:
            self.rejections = 0
        self._check_lost()
        return UpdateResult(kind, True, nis, gate, len(r))

    def _check_lost(self) -> None:
        if self.state != TrackState.TRACKING:
            return
        c = self.cfg
        if self.rejections >= c.lost_after_rejections:
            self.state, self.message = TrackState.LOST, f"{self.rejections} consecutive object observations rejected"
        elif self.covariance_trace > c.max_covariance_trace:
            self.state, self.message = TrackState.LOST, f"covariance trace {self.covariance_trace:.3g} too large"

    def update_fingertips_2d(self, uv, q=None, sigma_px: Optional[float] = None) -> UpdateResult:
        """Observed fingertip pixels ``(4, 2)`` (thumb, index, middle, ring; NaN rows = not seen)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if self.K is None:
            return _refused("fingertips_2d", "no camera intrinsics")
        if not self.calib:
            return _refused("fingertips_2d", "fingertips need estimate_calibration")
        seen = np.all(np.isfinite(uv), axis=1)
        if uv.shape[0] != 4 or seen.sum() < 1:
            return _refused("fingertips_2d", "no fingertip seen")
        p, Hp = self._hand_point_model(self.fingertip_points_hand(q)[seen])
        if np.any(p[:, 2] <= 1e-3):
            return _refused("fingertips_2d", "fingertip behind the camera")
        h, Jp = project(self.K, p)
        H = np.einsum("nij,njk->nik", Jp, Hp).reshape(-1, self.n)
        s = self.cfg.fingertip_px_sigma if sigma_px is None else sigma_px
        return self._update("fingertips_2d", (uv[seen] - h).reshape(-1), H, np.eye(H.shape[0]) * s ** 2)

    def update_fingertips_3d(self, p_cam, q=None, sigma: Optional[float] = None) -> UpdateResult:
        """Observed fingertip points ``(4, 3)`` in the camera frame (NaN rows = not seen)."""
        z = np.asarray(p_cam, dtype=np.float64).reshape(-1, 3)
        if not self.calib:
            return _refused("fingertips_3d", "fingertips need estimate_calibration")
        seen = np.all(np.isfinite(z), axis=1)
        if z.shape[0] != 4 or seen.sum() < 1:
            return _refused("fingertips_3d", "no fingertip seen")
        p, Hp = self._hand_point_model(self.fingertip_points_hand(q)[seen])
        s = self.cfg.fingertip_3d_sigma if sigma is None else sigma
        H = Hp.reshape(-1, self.n)
        return self._update("fingertips_3d", (z[seen] - p).reshape(-1), H, np.eye(H.shape[0]) * s ** 2)

    def update_center(self, u: float, v: float, depth: float = float("nan"),
                      sigma_px: Optional[float] = None, sigma_depth: Optional[float] = None) -> UpdateResult:
        """Mask centroid pixel ``(u, v)`` and median depth [m] inside the mask (NaN: pixel only)."""
        if self.K is None:
            return _refused("center", "no camera intrinsics")
        if not (math.isfinite(u) and math.isfinite(v)):
            return _refused("center", "non-finite centroid")
        h, H = self.center_model()
        sp = self.cfg.center_px_sigma if sigma_px is None else sigma_px
        sd = self.cfg.center_depth_sigma if sigma_depth is None else sigma_depth
        R = np.diag([sp ** 2, sp ** 2, sd ** 2]) + self.center_consider_cov
        frozen = None if self.cfg.center_corrects_rotation else self._rotation_idx
        if math.isfinite(depth) and depth > 0:
            r = np.array([u, v, depth]) - h
            return self._update("center", r, H, R, frozen)
        return self._update("center", np.array([u, v]) - h[:2], H[:2], R[:2, :2], frozen)

    def update_center_3d(self, p_cam, sigma: Optional[float] = None) -> UpdateResult:
        """Back-projected visible centre ``(3,)`` (camera frame, e.g. the centroid pixel at the median
        depth): compared with the model centre moved by the visible-surface offset."""
        z = np.asarray(p_cam, dtype=np.float64).reshape(3)
        if self.K is None:
            return _refused("center_3d", "no camera intrinsics")
        h_uvz = self.center_model()[0] - self.center_bias  # the bias state belongs to the 2D + depth centroid
        Ki = np.linalg.inv(self.K)
        h = h_uvz[2] * (Ki @ np.array([h_uvz[0], h_uvz[1], 1.0]))
        p, Hp = self._object_point_model(self.center_obj)
        s = self.cfg.center_3d_sigma if sigma is None else sigma
        return self._update("center_3d", z - h, Hp, np.eye(3) * s ** 2)

    def pose_model(self, T_cam_obj_meas: np.ndarray, depth_bias: bool = False):
        """Residual ``r`` ``(6,)`` = :func:`pose_error` of a measured pose ``(4, 4)`` against the
        estimate, and ``H`` ``(6, n)`` with ``r(x + dx) = r - H dx + O(dx^2)``.

        ``r = (t_z - t, log(R_z R^T))``; the estimate's camera error ``(v, w)`` moves it by
        ``(-v, -J_r^-1(phi) w)`` (:func:`so3_right_jacobian_inv`, ``phi`` the rotation residual),
        so ``H = blockdiag(I, J_r^-1(phi)) G`` with ``G`` the :func:`camera_error_map`.
        ``depth_bias`` (and the depth-bias states exist): the measurement is the pose moved by the
        bias (``apply_delta(T, b)``), so ``h`` includes it and ``H`` has ``blockdiag(I, J_r^-1)``
        in the bias columns."""
        T_h = self.T_cam_obj
        use_b = depth_bias and self.depth_bias_on
        if use_b:
            T_h = apply_delta_np(T_h, self.depth_bias)
        r = pose_error(T_cam_obj_meas, T_h)
        H = np.zeros((6, self.n))
        G = camera_error_map(self.T_ch, self.T_ho, self.calib)
        Jr = so3_right_jacobian_inv(r[3:])
        H[:3, :self.n_pose] = G[:3]
        H[3:, :self.n_pose] = Jr @ G[3:]
        if use_b:
            H[:3, self._db.start:self._db.start + 3] = np.eye(3)
            H[3:, self._db.start + 3:self._db.stop] = Jr
        return r, H

    def update_pose(self, T_cam_obj_meas, covariance: Optional[np.ndarray] = None, confidence: float = 1.0,
                    kind: str = "pose") -> UpdateResult:
        """Pose measurement ``(4, 4)`` of the object in the camera with its covariance ``(6, 6)``
        (apply_delta convention: x, y, z, rx, ry, rz; default ``pose_pos_sigma`` / ``pose_rot_sigma``).
        ``confidence`` in [0, 1]: 0 (or NaN) = no measurement, ignored (refused, not counted)."""
        if not (confidence > 0):
            return _refused(kind, "confidence 0", 6)
        T = self._check_pose(T_cam_obj_meas, "T_cam_obj_meas")
        c = self.cfg
        R = (np.asarray(covariance, dtype=np.float64) if covariance is not None
             else np.diag([c.pose_pos_sigma ** 2] * 3 + [c.pose_rot_sigma ** 2] * 3))
        if R.shape != (6, 6) or not np.all(np.isfinite(R)):
            raise ValueError(f"pose covariance must be a finite (6, 6) matrix, got shape {R.shape}")
        r, H = self.pose_model(T, depth_bias=kind == "depth_pose")
        return self._update(kind, r, H, (R + R.T) / 2)

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
            return _refused("depth_pose", "no fit" if icp_covariance is None else "low confidence", 6)
        return self.update_pose(T_cam_obj_fit, self.depth_pose_covariance(icp_covariance), confidence, "depth_pose")

    # ------------------------------------------------------------------ physics: penetration
    def hand_surface_points(self) -> np.ndarray:
        """All hand surface samples ``(N, 3)`` in the hand frame at the last joint vector."""
        if self._T_links is None:
            raise RuntimeError("no joint state yet: call predict() or initialize(q=...) first")
        T = self._T_links[self._surf_links]
        return np.einsum("kij,kj->ki", T[:, :3, :3], self._surf_pts) + T[:, :3, 3]

    def hand_signed_distance(self, p_hand: np.ndarray, T_hand_obj: Optional[np.ndarray] = None):
        """Signed distance ``(M,)`` [m, negative inside] of hand-frame points ``(M, 3)`` to the object
        at ``T_hand_obj`` (default: the estimate), and the outward normals ``(M, 3)`` in the hand frame."""
        T = self.T_ho if T_hand_obj is None else T_hand_obj
        R, t = T[:3, :3], T[:3, 3]
        d, n_o = self.sdf.query(torch.as_tensor((p_hand - t) @ R, dtype=torch.float32))
        return d.double().numpy(), n_o.double().numpy() @ R.T

    def penetration_jacobian(self, p_hand: np.ndarray, normals_hand: np.ndarray,
                             T_hand_obj: Optional[np.ndarray] = None) -> np.ndarray:
        """``d sdf / d state`` ``(M, n)`` of hand-frame points ``(M, 3)`` with outward normals ``(M, 3)``
        (hand frame). The point in the object is ``R^T exp(-w) (p - t - v)`` for the apply_delta
        error ``(v, w)`` of ``T_hand_obj`` (default: the estimate), so the row is ``(-n, n x (p - t))``;
        the calibration and the bias do not enter (the hand and the object are both in the hand frame)."""
        T = self.T_ho if T_hand_obj is None else T_hand_obj
        Hs = np.zeros((len(p_hand), self.n))
        Hs[:, :3] = -normals_hand
        Hs[:, 3:6] = np.cross(normals_hand, p_hand - T[:3, 3])
        return Hs

    def project_out_of_penetration(self, iterations: Optional[int] = None) -> ProjectionResult:
        """The pose to publish: the estimate moved out of penetration, so that no hand surface point
        is deeper than ``penetration_tolerance`` inside the object (physics prior as a constraint).
        Call after the frame's updates; the result's ``T_cam_obj`` is also
        :attr:`T_cam_obj_published` until the state changes.

        Constrained-Kalman *estimate projection* (Simon & Chia): with the active set ``A`` (points
        deeper than the tolerance, kept while not clearly out so that they stay on the surface),
        ``s_A(x) = 0`` is linearised (:meth:`penetration_jacobian` ``Hs``) and the object pose in the
        hand frame moves by the smallest correction in the metric of its covariance ``P_oo`` (the
        hand-object relative pose: calibration uncertainty included) that meets it:
        ``dx = (P_oo^-1 + Hs^T Hs / rho^2)^-1 Hs^T (-s_A) / rho^2``, a pseudo-measurement with a small ``rho``
        (10 % of the constraint's sigma in that metric; the information form costs
        ``6 x 6`` whatever the number of points, and stays bounded when two fingers ask for opposite
        moves). Re-linearised up to ``iterations`` times (default ``projection_iterations``), one
        SDF query each. Skipped (the estimate is published as it is) while the orientation is
        uncertain, second-largest rotation sigma above ``projection_max_rot_sigma`` (a body of
        revolution's spin stays free): then the penetration is mostly the rotation error itself
        and the smallest move out of the modelled fingers is not the truth - in the demo without
        the depth fit (sigma ~3 deg) projecting raised the true hand's penetration from 6 to 25 mm.

        By default the filter state is *not* changed (``projection_feedback = False``): the
        projected pose is an output, and ``P`` stays the covariance of the unconstrained estimate
        (projection never increases the error in that metric, so it is conservative for the
        published pose). Measured with feedback (``bench_ekf.py``, ``+depth``): where the modelled
        hand and a precise depth fit disagree by a few mm (encoder noise, calibration, or the
        generator's own 2-3 mm penetration of the box), the projected state sits tens of sigma
        from the next fits, which the NIS gate then rejects frame after frame, and the estimate
        drifts (0.2 rad after 2 s); letting the projection move the calibration instead walked it
        to 8 mm. With feedback the projected estimate becomes the state (object only, or with
        ``projection_corrects_calibration`` the full ``P^-1`` metric, calibration included)."""
        c = self.cfg
        n_it = c.projection_iterations if iterations is None else int(iterations)
        self._published = None
        if not self.initialized or self._T_links is None:
            return ProjectionResult(False, 0.0, 0.0, 0, T_cam_obj=self.T_cam_obj)
        lam = np.linalg.eigvalsh(self.covariance[3:, 3:])
        if math.sqrt(max(float(lam[1]), 0.0)) > c.projection_max_rot_sigma:
            # orientation too uncertain: penetrating points are mostly the rotation error, and the
            # smallest move out of them is not the truth
            self._published = (self.T_ho.copy(), self.T_ch.copy(), self.T_cam_obj)
            return ProjectionResult(False, 0.0, 0.0, 0, T_cam_obj=self.T_cam_obj)
        T_ho = self.T_ho.copy()
        p = self.hand_surface_points()
        # only points inside the object's bounding box can be inside it (grown by 5 mm: what the
        # projection's moves can bring in); typically a few dozen of the 2,000 samples
        q = (p - T_ho[:3, 3]) @ T_ho[:3, :3]
        tol = c.penetration_tolerance
        if not np.any(np.all((q > self._box_lo + tol) & (q < self._box_hi - tol), axis=1)):
            # nothing deeper than the tolerance inside the bounding box: no SDF query (~0.4 ms)
            self._published = (self.T_ho.copy(), self.T_ch.copy(), self.T_cam_obj)
            return ProjectionResult(False, 0.0, 0.0, 0, T_cam_obj=self.T_cam_obj)
        p = p[np.all((q > self._box_lo - 0.005) & (q < self._box_hi + 0.005), axis=1)]
        if not len(p):
            return ProjectionResult(False, 0.0, 0.0, 0, T_cam_obj=self.T_cam_obj)
        active = np.zeros(len(p), bool)
        d, nrm = self.hand_signed_distance(p, T_ho)
        before = max(0.0, -float(d.min()))
        full = c.projection_feedback and c.projection_corrects_calibration
        it, Pi, dx_all = 0, None, np.zeros(self.n)
        while it < n_it:
            # active set: new violators, and earlier ones not yet clearly out (a point another
            # constraint pushed outside is released instead of being pulled back onto the surface)
            active = (d < -c.penetration_tolerance) | (active & (d < 1e-5))
            if not (d[active] < -1e-5).any():   # all constrained points on the surface (10 um)
                break
            if Pi is None:
                Pi = np.linalg.inv(self.P)
                Pi = (Pi + Pi.T) / 2
                Po_inv = np.linalg.inv(self.P[:6, :6])
            Hs = self.penetration_jacobian(p[active], nrm[active], T_ho)
            # metric: the covariance of the object in the hand frame (marginal: the calibration's
            # uncertainty is uncertainty of the hand relative to the object; given the calibration
            # a precise depth fit leaves ~0.03 mm and the projection turned the object instead)
            M = Pi if full else Po_inv
            H = Hs if full else Hs[:, :6]
            # rho: 0.1 mm, or less where the metric is more certain: 10 % of the constraint's sigma
            rho2 = min(1e-8, 1e-2 * float(np.einsum("ij,ji->", H, np.linalg.solve(M, H.T))) / len(H))
            dx = np.zeros(self.n)
            dx[:len(M)] = np.linalg.solve(M + H.T @ H / rho2, H.T @ (-d[active]) / rho2)
            T_ho = apply_delta_np(T_ho, dx[:6])
            dx_all += dx
            it += 1
            d, nrm = self.hand_signed_distance(p, T_ho)
        after = max(0.0, -float(d.min()))
        shift = float(np.linalg.norm(T_ho[:3, 3] - self.T_ho[:3, 3]))
        T_ch = self.T_ch
        if it and c.projection_feedback:
            self.T_ho = T_ho
            if full and self.calib:
                self.T_ch = T_ch = apply_delta_np(self.T_ch, dx_all[6:12])
        T_out = T_ch @ T_ho
        self._published = (self.T_ho.copy(), self.T_ch.copy(), T_out)
        return ProjectionResult(it > 0, before, after, it, int(active.sum()), shift, T_out)

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


def symmetry_axis(obj) -> Optional[np.ndarray]:
    """Unit axis ``(3,)`` (object frame) of a rotationally symmetric object, None otherwise.

    Objects flagged ``symmetric`` (e.g. the soup can) are assumed to be bodies of revolution: the
    axis is the principal axis of inertia whose moment differs from the other two (equal) ones.
    """
    if not getattr(obj, "symmetric", False):
        return None
    mesh = obj.trimesh
    m = np.asarray(mesh.principal_inertia_components, dtype=np.float64)
    vec = np.asarray(mesh.principal_inertia_vectors, dtype=np.float64)
    d = [abs(m[(i + 1) % 3] - m[(i + 2) % 3]) for i in range(3)]  # the odd one out has equal partners
    axis = vec[int(np.argmin(d))]
    return axis / np.linalg.norm(axis)


def normalized_error_squared(error: np.ndarray, covariance: np.ndarray, axis_cam: Optional[np.ndarray] = None):
    """NEES of a pose error ``(6,)`` (:func:`pose_error`) under ``covariance`` ``(6, 6)``.

    ``axis_cam`` ``(3,)``: symmetry axis of the object in the camera frame. The rotation about it
    leaves the object's shape unchanged, so no shape observation constrains it and its "truth" is
    a texture convention: the NEES is then taken on the 5-dimensional complement (error and
    covariance projected onto it), a chi-square variable with 5 degrees of freedom.
    Returns ``(nees, dof)``.
    """
    e = np.asarray(error, dtype=np.float64)
    P = np.asarray(covariance, dtype=np.float64)
    if axis_cam is None:
        return float(e @ np.linalg.solve(P, e)), 6
    a = np.asarray(axis_cam, dtype=np.float64) / np.linalg.norm(axis_cam)
    u = np.zeros(6)
    u[3:] = a
    B = np.linalg.svd(np.eye(6) - np.outer(u, u))[0][:, :5]  # orthonormal basis of the complement
    e5, P5 = B.T @ e, B.T @ P @ B
    return float(e5 @ np.linalg.solve(P5, e5)), 5
