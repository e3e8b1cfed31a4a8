"""The ``model`` backend's result of one frame (:class:`ModelFit`) and the covariance of its
ICP pose from the normal matrix (:func:`icp_pose_covariance`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class ModelFit:
    """Result of :meth:`~hp_ros.core.segmentation.model.ModelObjectMasker.fit` for one frame.

    mask: ``(y1 - y0, x1 - x0)`` bool object pixels inside ``rect = (x0, y0, x1, y1)``.
    T_cam_obj: ``(4, 4)`` camera->object pose refined against depth.
    confidence: share of the rendered silhouette's valid-depth pixels that depth confirms,
        scaled down when less than half of the silhouette has depth; 0 when nothing is seen.
    inliers: depth points + model samples used in the last refinement step.
    covariance: ``(6, 6)`` covariance of ``T_cam_obj`` from the ICP's normal matrix (depth noise
        only, see :func:`icp_pose_covariance`) in the :func:`hp_ros.core.se3.apply_delta`
        convention of the EKF (x, y, z in the camera frame, then the rotation vector about the
        object origin); None without a refinement step (``iterations = 0`` or too few inliers).
    residual_sigma: ``(2,)`` robust RMS [m] of the two ICP terms' residuals at the result
        (measured points to the surface, model samples to depth); NaN without a refinement.
    """

    mask: np.ndarray
    rect: tuple
    T_cam_obj: np.ndarray
    confidence: float
    inliers: int = 0
    covariance: Optional[np.ndarray] = None
    residual_sigma: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))



def icp_pose_covariance(J: np.ndarray, r: np.ndarray, huber: np.ndarray, n1: int, t: np.ndarray):
    """Covariance of the pose found by the robust ICP of
    :class:`~hp_ros.core.segmentation.model.ModelObjectMasker`, from its normal matrix.

    Args:
        J: ``(M, 6)`` Jacobian of the residuals w.r.t. the ICP's left perturbation ``(v, w)``
            (``T' = [exp(w) | v] T``, camera frame); rows ``[:n1]`` are the first term (measured
            points to the surface), rows ``[n1:]`` the second (model samples to depth).
        r: ``(M,)`` residuals [m] at the result. huber: ``(M,)`` Huber weights in (0, 1].
        n1: number of first-term rows. t: ``(3,)`` translation of the result (camera frame).

    The ICP step solves ``A xi = -J^T W r`` with ``A = J^T W J`` and ``W = huber / (its term's
    count)`` (each term averaged). Those weights are not inverse variances, so the covariance of
    ``xi`` under independent residual noise of variance ``s_k^2`` per term is the sandwich
    ``A^-1 (J^T W S W J) A^-1``; ``s_k^2`` is the Huber-weighted mean square of the term's
    residuals. Checked against the scatter of fits over depth-noise draws
    (``test/test_ekf_physics_depth.py``; box, 3 faces seen): per axis 0.7-1.0 x the predicted
    sigma, per direction 0.26-1.5 x the predicted variance - conservative; the residuals also
    hold the model's own misfit (SDF grid, pixel rounding), which does not scatter. Weighting
    each row by the stereo noise law along its ray (``z |n . X|``) matched no better (0.45-3.7x,
    one direction under-stated). Directions the geometry does not constrain (the spin of a body of revolution) get
    a variance of ~1e9 x the constrained ones (eigenvalues of ``A`` floored), not infinity.
    The result is mapped to the EKF's :func:`hp_ros.core.se3.apply_delta` convention
    (``t' = t + v_a``, rotation about the object origin): ``v_a = v - [t]x w``.

    This is the depth *noise* part only: model and occlusion errors correlated over frames are
    not in it (the tracker's depth-fit noise model adds them, measured in ``bench_ekf.py``).
    Returns ``(covariance (6, 6), sigma (2,) per-term RMS [m], NaN for an empty term)``.
    """
    J, r, huber = np.asarray(J, np.float64), np.asarray(r, np.float64), np.asarray(huber, np.float64)
    m = len(r)
    var, sigma = np.zeros(m), np.full(2, np.nan)
    cnt = np.zeros(m)
    for k, sl in enumerate((slice(0, n1), slice(n1, m))):
        h, rk = huber[sl], r[sl]
        if len(rk):
            sigma[k] = np.sqrt(float((h * rk * rk).sum() / max(float(h.sum()), 1e-12)))
            var[sl], cnt[sl] = sigma[k] ** 2, len(rk)
    w = huber / np.maximum(cnt, 1.0)
    Jw = J * w[:, None]
    A = Jw.T @ J
    B = (Jw * var[:, None]).T @ Jw                       # J^T W S W J
    lam, V = np.linalg.eigh((A + A.T) / 2)
    lam = np.maximum(lam, 1e-9 * max(float(lam[-1]), 1e-300))
    Ai = (V / lam) @ V.T
    C = Ai @ B @ Ai
    M = np.eye(6)
    tx = np.asarray(t, np.float64)
    M[:3, 3:] = -np.array([[0.0, -tx[2], tx[1]], [tx[2], 0.0, -tx[0]], [-tx[1], tx[0], 0.0]])
    C = M @ C @ M.T
    return (C + C.T) / 2, sigma
