"""Trackers that do nothing clever, to score the real one against (ROS-free).

A tracker's accuracy means little unless it beats what needs no vision at all:

* ``frozen``: the initial pose held in the camera frame for every frame;
* ``hand_only``: the object rigidly attached to the hand at the initial pose, following the
  camera->hand transform (``/tf``) and the measured joints, with no vision. The joints move it by
  the rigid (Kabsch) fit of the fingertips that lie within ``attach_distance`` of the object at
  the initial pose, from the initial joint vector to the current one; with fewer than three such
  fingertips the object stays fixed to the hand base.

:func:`baseline_poses` computes both; :func:`compare` scores an estimate and the baselines on the
same frames and gives the tracker's ratio to the better baseline per metric
(``adds_ratio_to_baseline``, ``rot_ratio_to_baseline``: below 1 the tracker beats doing nothing).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["BASELINES", "frozen_poses", "hand_only_poses", "baseline_poses", "compare", "ratios", "rigid_fit", "joints_at", "sequence_baselines", "frame_errors", "pooled_report", "sequence_report"]

BASELINES = ("frozen", "hand_only")


def rigid_fit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(4, 4)`` rotation + translation mapping points ``a`` ``(N, 3)`` onto ``b`` ``(N, 3)`` in
    the least-squares sense (N >= 3, no scaling)."""
    ca, cb = a.mean(0), b.mean(0)
    U, _, Vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, cb - R @ ca
    return T


def frozen_poses(T0: np.ndarray, n: int) -> np.ndarray:
    """``(n, 4, 4)``: ``T0`` ``(4, 4)`` repeated."""
    return np.repeat(np.asarray(T0, dtype=np.float64)[None], n, axis=0)


def _as_frames(T_cam_hand: np.ndarray, n: int) -> np.ndarray:
    T = np.asarray(T_cam_hand, dtype=np.float64)
    return np.repeat(T[None], n, axis=0) if T.ndim == 2 else T


def hand_only_poses(hand, T0: np.ndarray, q: np.ndarray, T_cam_hand: np.ndarray, model_points: np.ndarray,
                    attach_distance: float = 0.02) -> np.ndarray:
    """``(Nf, 4, 4)``: the object attached to the hand at frame 0 (see the module doc).

    ``hand``: :class:`hp_ros.core.hand.HandModel`; ``T0`` ``(4, 4)`` initial camera pose; ``q``
    ``(Nf, J)`` measured joints at the frames; ``T_cam_hand`` ``(Nf, 4, 4)`` (or one ``(4, 4)``) the
    published camera->hand transform at the frames; ``model_points`` ``(M, 3)`` object frame.
    """
    import torch

    q = np.asarray(q, dtype=np.float64)
    n = len(q)
    T_ch = _as_frames(T_cam_hand, n)
    T_ho0 = np.linalg.inv(T_ch[0]) @ np.asarray(T0, dtype=np.float64)
    tips = hand.fingertips(torch.as_tensor(q, dtype=torch.float64)).double().numpy()   # (Nf, F, 3) hand frame
    pts_h = np.asarray(model_points, float) @ T_ho0[:3, :3].T + T_ho0[:3, 3]            # (M, 3) hand frame
    dist = np.linalg.norm(tips[0][:, None] - pts_h[None], axis=-1).min(axis=1)          # (F,)
    near = dist < attach_distance
    out = np.empty((n, 4, 4))
    for k in range(n):
        M = rigid_fit(tips[0, near], tips[k, near]) if near.sum() >= 3 else np.eye(4)
        out[k] = T_ch[k] @ M @ T_ho0
    return out


def baseline_poses(T0: np.ndarray, n: int, hand=None, q: Optional[np.ndarray] = None,
                   T_cam_hand: Optional[np.ndarray] = None, model_points: Optional[np.ndarray] = None) -> dict:
    """``{"frozen": (n, 4, 4), "hand_only": (n, 4, 4)}``; ``hand_only`` only when ``hand``, ``q``,
    ``T_cam_hand`` and ``model_points`` are given (see :func:`hand_only_poses`)."""
    out = {"frozen": frozen_poses(T0, n)}
    if hand is not None and q is not None and T_cam_hand is not None and model_points is not None:
        out["hand_only"] = hand_only_poses(hand, T0, q, T_cam_hand, model_points)
    return out


def _scores(T_gt: np.ndarray, T: np.ndarray, points: np.ndarray) -> dict:
    from hp_ros.core import metrics

    return {"adds_mean_cm": 100 * float(metrics.add_s(T_gt, T, points).mean()),
            "add_mean_cm": 100 * float(metrics.add(T_gt, T, points).mean()),
            "rot_err_mean_deg": float(metrics.rotation_error_deg(T_gt, T).mean())}


def ratios(tracker: dict, baselines: dict) -> dict:
    """The tracker's ADD-S and rotation means over the better baseline's, per metric:
    ``{"adds_ratio_to_baseline", "rot_ratio_to_baseline"}`` (``baselines``: name -> scores of
    :func:`compare`)."""
    out = {}
    for key, metric in (("adds_ratio_to_baseline", "adds_mean_cm"), ("rot_ratio_to_baseline", "rot_err_mean_deg")):
        best = min(b[metric] for b in baselines.values())
        out[key] = float(tracker[metric] / best) if best > 0 else float("inf")
    return out


def compare(T_gt: np.ndarray, T_est: np.ndarray, baselines: dict, points: np.ndarray) -> dict:
    """Scores on the same frames: ``{"tracker": {...}, "baselines": {name: {...}},
    "adds_ratio_to_baseline", "rot_ratio_to_baseline"}``; each score dict has ``adds_mean_cm``,
    ``add_mean_cm`` and ``rot_err_mean_deg``. ``T_gt`` / ``T_est`` / each baseline ``(Nf, 4, 4)``."""
    T_gt = np.asarray(T_gt, dtype=np.float64)
    tr = _scores(T_gt, np.asarray(T_est, dtype=np.float64), points)
    bl = {name: _scores(T_gt, T, points) for name, T in baselines.items()}
    return {"tracker": tr, "baselines": bl, **ratios(tr, bl)}


def joints_at(stamps_j: np.ndarray, q_j: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Joint vectors ``(N, J)`` at ``stamps`` ``(N,)``, linearly interpolated from the joint states
    ``stamps_j`` ``(Nj,)`` / ``q_j`` ``(Nj, J)`` (held at the ends)."""
    t = np.asarray(stamps_j, dtype=np.float64)
    s = np.asarray(stamps, dtype=np.float64)
    q_j = np.asarray(q_j, dtype=np.float64)
    return np.stack([np.interp(s, t, q_j[:, j]) for j in range(q_j.shape[1])], axis=1)


def sequence_baselines(seq, T0: np.ndarray, hand, model_points: np.ndarray) -> dict:
    """Both baselines for a :class:`hp_ros.core.synth.SynthSequence` as a tracker sees it: the
    published joint states interpolated at the frames and the published camera->hand transform
    at the frames (:meth:`SynthSequence.cam_hand_frames`)."""
    q = joints_at(seq.joint_stamps_ns, seq.joint_positions, seq.frame_stamps_ns)
    return baseline_poses(T0, seq.num_frames, hand, q, seq.cam_hand_frames(published=True), model_points)


def frame_errors(T_gt: np.ndarray, T: np.ndarray, points: np.ndarray, axis_obj: Optional[np.ndarray] = None) -> dict:
    """Per-frame errors ``{"adds": (Nf,) m, "add": (Nf,) m, "rot": (Nf,) deg}`` of ``T`` ``(Nf, 4, 4)``.
    ``rot`` is the geodesic angle, or for a rotationally symmetric object (``axis_obj`` ``(3,)``, its
    axis in the object frame) the angle between the true and the estimated axis: the spin about it
    is unobservable from shape and would count the same for every tracker and baseline."""
    from hp_ros.core import metrics

    rot = metrics.rotation_error_deg(T_gt, T) if axis_obj is None else metrics.axis_error_deg(T_gt, T, axis_obj)
    return {"adds": metrics.add_s(T_gt, T, points), "add": metrics.add(T_gt, T, points), "rot": rot}


def pooled_report(tracker: list, baselines: dict) -> dict:
    """Pool per-run :func:`frame_errors` (``tracker``: list of dicts; ``baselines``: name -> list)
    over all frames: the JSON keys ``adds_ratio_to_baseline``, ``rot_ratio_to_baseline`` and, per
    baseline, ``baseline_<name>_adds_mean_cm`` / ``_rot_err_mean_deg`` / ``_add_mean_cm``."""
    def means(runs):
        cat = {k: np.concatenate([r[k] for r in runs]) for k in ("adds", "add", "rot")}
        return {"adds_mean_cm": 100 * float(cat["adds"].mean()), "add_mean_cm": 100 * float(cat["add"].mean()),
                "rot_err_mean_deg": float(cat["rot"].mean())}

    tr = means(tracker)
    bl = {name: means(runs) for name, runs in baselines.items()}
    out = {k: round(v, 4) for k, v in ratios(tr, bl).items()}
    for name, m in bl.items():
        for k, v in m.items():
            out[f"baseline_{name}_{k}"] = round(v, 4)
    return out


def sequence_report(seq, est: dict, T0: np.ndarray, hand, model_points: np.ndarray,
                    axis_obj: Optional[np.ndarray] = None) -> dict:
    """The baselines beside a tracker's estimates ``est`` ``{stamp ns: (4, 4)}`` on the frames of ``seq``
    it posed (same frames for all): ``{"baselines": {name: {adds_mean_cm, add_mean_cm,
    rot_err_mean_deg}}, "tracker_compared": {...}, "adds_ratio_to_baseline", "rot_ratio_to_baseline"}``
    (rotation of a symmetric object: see :func:`frame_errors`). Empty when no frame was posed."""
    stamps = [int(s) for s in seq.frame_stamps_ns]
    idx = [k for k, s in enumerate(stamps) if s in est]
    if not idx:
        return {}
    gt = seq.T_cam_obj[idx]
    T = np.stack([np.asarray(est[stamps[k]], dtype=np.float64) for k in idx])
    tr = frame_errors(gt, T, model_points, axis_obj)
    bl = {name: frame_errors(gt, B[idx], model_points, axis_obj)
          for name, B in sequence_baselines(seq, T0, hand, model_points).items()}
    rep = pooled_report([tr], {name: [e] for name, e in bl.items()})

    def means(e):
        return {"adds_mean_cm": round(100 * float(e["adds"].mean()), 4), "add_mean_cm": round(100 * float(e["add"].mean()), 4),
                "rot_err_mean_deg": round(float(e["rot"].mean()), 4)}

    return {"baselines": {name: means(e) for name, e in bl.items()}, "tracker_compared": means(tr),
            "adds_ratio_to_baseline": rep["adds_ratio_to_baseline"], "rot_ratio_to_baseline": rep["rot_ratio_to_baseline"]}
