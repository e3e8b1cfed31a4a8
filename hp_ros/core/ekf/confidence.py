"""A per-frame confidence score in [0, 1] from the filter's covariance and its innovations.

The score of a published pose is

    score = P(ADD < tolerance | N(0, covariance x inflation)) x exp(-age / age_time)

and 0 while the track is LOST or not initialised:

* **Covariance.** A pose error ``xi = (v, w)`` (apply_delta convention, camera axes) moves the object
  point ``q = R p`` by ``v - [q]x w``; over the object's surface samples the mean square displacement
  (the squared RMS form of ADD) is the quadratic form ``xi^T D xi`` with
  ``D = [[I, -[q_mean]x], [-[q_mean]x^T, mean(|q|^2 I - q q^T)]]``. For a body of revolution the
  rotation about its axis is left out (ADD-S does not see it). Under ``xi ~ N(0, P)`` the form is a
  weighted sum of chi-squares with mean ``tr(D P)`` and variance ``2 tr((D P)^2)``; the score uses the
  gamma distribution with those two moments (Welch-Satterthwaite) for ``P(ADD^2 < tolerance^2)``,
  ``tolerance`` = 1 cm by default (the reliability table's ADD-S threshold).
* **Innovations (NIS).** The covariance is only right when the innovations agree with it. The
  normalised innovation ``NIS / dof`` of every update (applied or gated; a gated one counts at most
  ``gate / dof``) is averaged exponentially over about ``nis_window`` updates; when the average is
  above 1 the filter is over-confident by that factor and the covariance is inflated by it.
* **Age.** A pose predicted from the joint states without a recent object observation (depth fit or
  centre) rests on the contacts not slipping, which the process noise models only in part: the
  factor ``exp(-age / age_time)``, ``age`` the time since the last accepted object observation (or
  the initial pose). A frame whose own object observation was applied has age 0; a predicted-only
  frame scores below an otherwise identical tracked one.

Calibrated on the synthetic sequences (``benchmarks/bench_confidence.py``: reliability table in the
README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import gammainc

from hp_ros.core.ekf.geometry import skew
from hp_ros.core.ekf.track_policy import OBJECT_KINDS, TrackState

__all__ = ["ConfidenceConfig", "TrackConfidence", "add_form", "displacement_probability", "point_moments"]


@dataclass
class ConfidenceConfig:
    tolerance: float = 0.01     # [m] ADD the probability refers to (ADD-S < 1 cm)
    nis_window: float = 10.0    # updates the NIS average spans (exponential, alpha = 1 / window)
    age_time: float = 10.0      # [s] time constant of the age factor


def point_moments(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (3,), S (3, 3))`` of object points ``(N, 3)``: ``S = mean(|p|^2 I - p p^T)``."""
    p = np.asarray(points, np.float64)
    return p.mean(0), np.mean((p * p).sum(1)) * np.eye(3) - p.T @ p / len(p)


def add_form(points, R: np.ndarray, axis: Optional[np.ndarray] = None) -> np.ndarray:
    """``D`` ``(6, 6)``: mean squared displacement of ``points`` ``(N, 3)`` (object frame; or their
    :func:`point_moments`) under a pose error ``xi`` is ``xi^T D xi`` at the rotation ``R`` ``(3, 3)``;
    ``axis`` ``(3,)`` (object frame): a symmetry axis whose rotation is left out."""
    mean, S = points if isinstance(points, tuple) else point_moments(points)
    D = np.eye(6)
    D[:3, 3:] = -skew(R @ mean)
    D[3:, :3] = D[:3, 3:].T
    D[3:, 3:] = R @ S @ R.T
    if axis is not None:
        a = R @ np.asarray(axis, np.float64)
        J = np.eye(6)
        J[3:, 3:] -= np.outer(a, a)
        D = J.T @ D @ J
    return D


def displacement_probability(covariance: np.ndarray, D: np.ndarray, tolerance: float) -> float:
    """``P(xi^T D xi < tolerance^2)`` for ``xi ~ N(0, covariance)`` ``(6, 6)`` (moment-matched gamma,
    see the module doc); 1 for a zero covariance, 0 for a non-finite one."""
    P = np.asarray(covariance, dtype=np.float64)
    if P.shape != (6, 6) or not np.all(np.isfinite(P)):
        return 0.0
    DP = D @ P
    mean, sq = float(np.trace(DP)), float(np.trace(DP @ DP))
    if mean <= 0.0 or sq <= 0.0:
        return 1.0
    theta = 2.0 * sq / mean          # gamma scale and shape with the form's mean and variance
    return float(gammainc(mean / theta, tolerance ** 2 / theta))


class TrackConfidence:
    """Running state of the score: the NIS average and the stamp of the last accepted object
    observation. ``points`` ``(N, 3)``: object surface samples (object frame); ``axis``: symmetry
    axis ``(3,)`` or None."""

    def __init__(self, points: np.ndarray, axis: Optional[np.ndarray] = None,
                 config: Optional[ConfidenceConfig] = None):
        self.moments = point_moments(points)  # per frame only rotated: D in a few 3x3 products
        self.axis = axis
        self.cfg = config or ConfidenceConfig()
        self.reset()

    @classmethod
    def for_object(cls, obj, config: Optional[ConfidenceConfig] = None, n_points: int = 200) -> "TrackConfidence":
        """From an :class:`~hp_ros.core.objects.ObjectModel` (its surface samples and symmetry)."""
        from hp_ros.core.ekf.consistency import symmetry_axis

        pts = obj.surface_points(n_points)
        pts = pts.double().numpy() if hasattr(pts, "double") else np.asarray(pts, np.float64)
        return cls(pts, symmetry_axis(obj), config)

    def reset(self) -> None:
        self.nis_avg = 1.0
        self.last_object_stamp: Optional[int] = None

    def observe(self, stamp: int, updates: dict) -> None:
        """One frame's update results (``{kind: UpdateResult}``), applied at ``stamp`` [ns]."""
        a = 1.0 / max(self.cfg.nis_window, 1.0)
        for r in updates.values():
            if not (r.dim > 0 and math.isfinite(r.nis)):
                continue  # refused before an innovation (no fit, no intrinsics)
            ratio = r.nis / r.dim
            if math.isfinite(r.gate):
                ratio = min(ratio, r.gate / r.dim)
            self.nis_avg = (1.0 - a) * self.nis_avg + a * ratio
            if r.accepted and r.kind in OBJECT_KINDS:
                self.last_object_stamp = stamp if self.last_object_stamp is None else max(stamp, self.last_object_stamp)

    def mark(self, stamp: int) -> None:
        """A pose from outside (initial pose, refinement result) at ``stamp``: age 0 there."""
        self.last_object_stamp = stamp

    def age(self, stamp: int) -> float:
        """Seconds from the last accepted object observation to ``stamp`` (inf: none yet)."""
        if self.last_object_stamp is None:
            return math.inf
        return max(stamp - self.last_object_stamp, 0) * 1e-9

    def score(self, stamp: int, state: int, T_cam_obj: Optional[np.ndarray], covariance: Optional[np.ndarray]) -> float:
        """The score in [0, 1] of the pose ``T_cam_obj`` ``(4, 4)`` published for the frame at ``stamp``
        with ``covariance`` ``(6, 6)`` (module doc)."""
        if state != TrackState.TRACKING or covariance is None or T_cam_obj is None:
            return 0.0
        D = add_form(self.moments, np.asarray(T_cam_obj, np.float64)[:3, :3], self.axis)
        p = displacement_probability(np.asarray(covariance) * max(self.nis_avg, 1.0), D, self.cfg.tolerance)
        return float(p * math.exp(-self.age(stamp) / self.cfg.age_time))
