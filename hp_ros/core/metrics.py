"""Pose-estimation metrics: ADD, ADD-S, AUC, rotation/translation error, mask IoU, 2D error.

All functions accept numpy arrays or torch tensors (converted to float64 numpy; these are
evaluation metrics, not losses, so nothing here is differentiable) and return numpy arrays or
Python floats. Poses are ``(B, 4, 4)`` or ``(4, 4)`` ``T_camera_object``; a single pose gives
a ``(1,)`` result. Distances are in the unit of the inputs (metres in hp_ros).

Conventions (YCB-Video / PoseCNN, Xiang et al. 2018):

* ADD  = mean_i || T_gt x_i - T_est x_i ||  over the model points ``x_i``.
* ADD-S = mean_i min_j || T_gt x_i - T_est x_j ||  (closest-point distance; for symmetric
  objects). ADD-S <= ADD always.
* AUC: area under the accuracy-threshold curve acc(tau) = fraction of frames with error < tau
  for tau in [0, max_threshold] (default 0.1 m), divided by max_threshold so it lies in
  [0, 1]. It is computed exactly: AUC = mean_k clip(1 - e_k / max_threshold, 0, 1)
  (PoseCNN's code integrates a sampled curve, which agrees to the sampling step).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "add", "add_s", "accuracy_curve", "auc", "rotation_error_deg", "axis_error_deg", "translation_error",
    "mask_iou", "projection_error_2d", "chamfer_distance", "match_stamps", "evaluate_sequence",
]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _poses(T: Any, name: str) -> np.ndarray:
    T = _np(T)
    if T.shape == (4, 4):
        T = T[None]
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f"{name} must be (B, 4, 4) or (4, 4), got {T.shape}")
    return T


def _pair(T_gt: Any, T_est: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _poses(T_gt, "T_gt"), _poses(T_est, "T_est")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"T_gt has {a.shape[0]} poses but T_est has {b.shape[0]}")
    return a, b


def _points(points: Any) -> np.ndarray:
    p = _np(points)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
        raise ValueError(f"model points must be a non-empty (N, 3) array, got {p.shape}")
    return p


def _transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(B, 4, 4), (N, 3) -> (B, N, 3)."""
    return p[None] @ T[:, :3, :3].transpose(0, 2, 1) + T[:, None, :3, 3]


def add(T_gt: Any, T_est: Any, points: Any) -> np.ndarray:
    """ADD ``(B,)``: mean distance of model points ``(N, 3)`` under the two poses ``(B, 4, 4)``."""
    a, b = _pair(T_gt, T_est)
    p = _points(points)
    return np.linalg.norm(_transform(a, p) - _transform(b, p), axis=-1).mean(axis=1)


def add_s(T_gt: Any, T_est: Any, points: Any) -> np.ndarray:
    """ADD-S ``(B,)``: mean over ground-truth-posed points of the distance to the closest
    estimate-posed point (exact nearest neighbour, scipy cKDTree)."""
    a, b = _pair(T_gt, T_est)
    p = _points(points)
    pa, pb = _transform(a, p), _transform(b, p)
    return np.array([cKDTree(pb[k]).query(pa[k], k=1)[0].mean() for k in range(a.shape[0])])


def _errors(errors: Any) -> np.ndarray:
    e = _np(errors).reshape(-1)
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError("errors must be non-negative (use inf for a missing estimate), got NaN or < 0")
    return e


def accuracy_curve(errors: Any, max_threshold: float = 0.1, n: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy-threshold curve: thresholds ``(n,)`` in [0, max] and fraction of errors < threshold."""
    e = _errors(errors)
    tau = np.linspace(0.0, max_threshold, n)
    if e.size == 0:
        return tau, np.zeros(n)
    return tau, (e[None, :] < tau[:, None]).mean(axis=1)


def auc(errors: Any, max_threshold: float = 0.1) -> float:
    """Normalised area under the accuracy-threshold curve over [0, max_threshold] (exact).

    Missing estimates should be passed as ``inf`` (they count as failures). Empty -> 0.
    """
    if not max_threshold > 0:
        raise ValueError(f"max_threshold must be > 0, got {max_threshold}")
    e = _errors(errors)
    if e.size == 0:
        return 0.0
    return float(np.clip(1.0 - e / max_threshold, 0.0, 1.0).mean())


def rotation_error_deg(T_gt: Any, T_est: Any) -> np.ndarray:
    """Geodesic rotation error ``(B,)`` in degrees: angle of R_gt^T R_est (poses or (B,3,3))."""
    a, b = _np(T_gt), _np(T_est)
    if a.shape[-2:] == (4, 4):
        a, b = a[..., :3, :3], b[..., :3, :3]
    a, b = a.reshape(-1, 3, 3), b.reshape(-1, 3, 3)
    if a.shape != b.shape:
        raise ValueError(f"rotation batches differ: {a.shape} vs {b.shape}")
    R = a.transpose(0, 2, 1) @ b
    # arccos of the trace is ill-conditioned near 0; atan2 of (|skew|, trace) is exact everywhere
    skew = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], -1)
    ang = np.arctan2(0.5 * np.linalg.norm(skew, axis=-1), 0.5 * (np.trace(R, axis1=1, axis2=2) - 1.0))
    return np.degrees(ang)


def axis_error_deg(T_gt: Any, T_est: Any, axis_obj: Any) -> np.ndarray:
    """Rotation error ``(B,)`` in degrees of a rotationally symmetric object: the angle between the
    true and the estimated symmetry axis (``axis_obj`` ``(3,)``, object frame; its sign does not
    matter). The spin about the axis is unobservable from the shape, so it is not counted."""
    a, b = _np(T_gt), _np(T_est)
    a, b = a[..., :3, :3].reshape(-1, 3, 3), b[..., :3, :3].reshape(-1, 3, 3)
    if a.shape != b.shape:
        raise ValueError(f"rotation batches differ: {a.shape} vs {b.shape}")
    u = np.asarray(axis_obj, dtype=np.float64).reshape(3)
    u = u / np.linalg.norm(u)
    ga, gb = a @ u, b @ u                                              # (B, 3) axes in the camera frame
    # atan2(|a x b|, |a . b|): exact near 0 where arccos is not
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(ga, gb), axis=-1), np.abs(np.einsum("bi,bi->b", ga, gb))))


def translation_error(T_gt: Any, T_est: Any) -> np.ndarray:
    """Euclidean distance ``(B,)`` between the translations of the poses."""
    a, b = _pair(T_gt, T_est)
    return np.linalg.norm(a[:, :3, 3] - b[:, :3, 3], axis=-1)


def mask_iou(pred: Any, gt: Any) -> np.ndarray:
    """Intersection over union ``(B,)`` of boolean masks ``(B, H, W)`` or ``(H, W)``.

    Non-zero counts as inside. Two empty masks have IoU 1 (they agree perfectly).
    """
    p, g = _np(pred) > 0.5, _np(gt) > 0.5
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {g.shape}")
    if p.ndim == 2:
        p, g = p[None], g[None]
    inter = (p & g).reshape(p.shape[0], -1).sum(1)
    union = (p | g).reshape(p.shape[0], -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def projection_error_2d(T_gt: Any, T_est: Any, points: Any, K: Any) -> np.ndarray:
    """Mean pixel distance ``(B,)`` between model points projected with the two poses.

    ``K`` is the ``(3, 3)`` pinhole matrix. Frames where a point lies at or behind the camera
    plane (z <= 1e-6) under either pose get ``inf``.
    """
    a, b = _pair(T_gt, T_est)
    p, K = _points(points), _np(K)
    if K.shape != (3, 3):
        raise ValueError(f"K must be (3, 3), got {K.shape}")
    out = []
    for pa, pb in zip(_transform(a, p), _transform(b, p)):
        if pa[:, 2].min() <= 1e-6 or pb[:, 2].min() <= 1e-6:
            out.append(np.inf)
            continue
        ua = (pa @ K.T)[:, :2] / pa[:, 2:3]
        ub = (pb @ K.T)[:, :2] / pb[:, 2:3]
        out.append(np.linalg.norm(ua - ub, axis=-1).mean())
    return np.array(out)


def chamfer_distance(a: Any, b: Any) -> float:
    """Symmetric Chamfer distance between point sets ``(N, D)`` and ``(M, D)`` (D = 2 or 3):
    0.5 * (mean_a min_b |a - b| + mean_b min_a |b - a|)."""
    a, b = _np(a), _np(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"need two non-empty point sets of equal dimension, got {a.shape}, {b.shape}")
    return float(0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()))


def match_stamps(gt_stamps: Any, est_stamps: Any, tolerance_ns: int) -> np.ndarray:
    """For each ground-truth stamp the index of the nearest estimate stamp within
    ``tolerance_ns`` (int ns), or -1. Returns ``(G,)`` int64."""
    g = np.asarray(gt_stamps, dtype=np.int64).reshape(-1)
    e = np.asarray(est_stamps, dtype=np.int64).reshape(-1)
    if e.size == 0:
        return np.full(g.shape, -1, np.int64)
    order = np.argsort(e, kind="stable")
    es = e[order]
    pos = np.searchsorted(es, g)
    lo, hi = np.clip(pos - 1, 0, es.size - 1), np.clip(pos, 0, es.size - 1)
    pick = np.where(np.abs(es[hi] - g) < np.abs(es[lo] - g), hi, lo)
    ok = np.abs(es[pick] - g) <= tolerance_ns
    return np.where(ok, order[pick], -1)


def evaluate_sequence(
    gt: Mapping[int, Any], est: Mapping[int, Any], model_points: Any, symmetric: bool = False, *,
    tolerance_ns: int = 5_000_000, auc_max_m: float = 0.1, symmetry_axis: Any = None,
) -> dict:
    """Score a sequence of estimated object poses against ground truth.

    Args:
        gt: {stamp ns: (4, 4) T_camera_object} ground truth.
        est: {stamp ns: (4, 4)} estimates; each GT frame is matched to the nearest estimate
            stamp within ``tolerance_ns``.
        model_points: ``(N, 3)`` object model points in metres (object frame).
        symmetric: the object is symmetric; ``primary_*`` keys then use ADD-S, else ADD.
        auc_max_m: upper AUC threshold (0.1 m = YCB-Video).
        symmetry_axis: ``(3,)`` axis (object frame) of a rotationally symmetric object, or None:
            then ``rot_err_*`` is :func:`axis_error_deg` (the unobservable spin not counted) and
            ``rot_err_geodesic_*`` keeps the full angle; without it both are the geodesic angle.

    Returns:
        dict with scalar keys ``n_frames`` (= ``frames``, GT frames), ``n_matched``,
        ``add_mean_cm``, ``adds_mean_cm``, ``adds_max_cm``, ``add_auc``, ``adds_auc``,
        ``rot_err_mean_deg``, ``rot_err_geodesic_mean_deg``, ``trans_err_mean_cm``, ``primary`` ('ADD' or 'ADD-S'),
        ``primary_mean_cm``, ``primary_auc``; and ``per_frame``: list of dicts with
        ``stamp_ns``, ``matched``, ``add_cm``, ``adds_cm``, ``rot_err_deg``, ``rot_err_geodesic_deg``,
        ``trans_err_cm``
        (None where unmatched). Means are over matched frames (NaN when none); AUCs are over
        all GT frames with unmatched ones counted as failures.
    """
    points = _points(model_points)
    gt_stamps = np.array(sorted(gt), dtype=np.int64)
    est_stamps = np.array(list(est), dtype=np.int64)
    idx = match_stamps(gt_stamps, est_stamps, tolerance_ns)
    matched = idx >= 0
    n = len(gt_stamps)
    per = {k: np.full(n, np.inf) for k in ("add", "adds", "rot", "geo", "trans")}
    if matched.any():
        T_gt = np.stack([_np(gt[int(s)]) for s in gt_stamps[matched]])
        T_est = np.stack([_np(est[int(est_stamps[i])]) for i in idx[matched]])
        per["add"][matched] = add(T_gt, T_est, points)
        per["adds"][matched] = add_s(T_gt, T_est, points)
        per["geo"][matched] = rotation_error_deg(T_gt, T_est)
        per["rot"][matched] = per["geo"][matched] if symmetry_axis is None else \
            axis_error_deg(T_gt, T_est, symmetry_axis)
        per["trans"][matched] = translation_error(T_gt, T_est)

    def mean(x: np.ndarray) -> float:
        return float(x[matched].mean()) if matched.any() else float("nan")

    out = {
        "n_frames": int(n), "frames": int(n), "n_matched": int(matched.sum()),
        "add_mean_cm": 100 * mean(per["add"]), "adds_mean_cm": 100 * mean(per["adds"]),
        "adds_max_cm": 100 * float(per["adds"][matched].max()) if matched.any() else float("nan"),
        "add_auc": auc(per["add"], auc_max_m), "adds_auc": auc(per["adds"], auc_max_m),
        "rot_err_mean_deg": mean(per["rot"]), "rot_err_geodesic_mean_deg": mean(per["geo"]),
        "trans_err_mean_cm": 100 * mean(per["trans"]),
        "auc_max_cm": 100 * auc_max_m,
    }
    out["primary"] = "ADD-S" if symmetric else "ADD"
    out["primary_mean_cm"] = out["adds_mean_cm" if symmetric else "add_mean_cm"]
    out["primary_auc"] = out["adds_auc" if symmetric else "add_auc"]
    out["per_frame"] = [
        {"stamp_ns": int(s), "matched": bool(m),
         "add_cm": 100 * float(per["add"][k]) if m else None,
         "adds_cm": 100 * float(per["adds"][k]) if m else None,
         "rot_err_deg": float(per["rot"][k]) if m else None,
         "rot_err_geodesic_deg": float(per["geo"][k]) if m else None,
         "trans_err_cm": 100 * float(per["trans"][k]) if m else None}
        for k, (s, m) in enumerate(zip(gt_stamps, matched))
    ]
    return out
