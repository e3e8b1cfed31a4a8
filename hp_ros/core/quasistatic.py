"""Quasistatic object motion from hand contacts (the EKF's dynamics model, ROS-free).

The hand is the actuator: hand points touching the object do not slide on it, so between two hand
configurations the object moves with the rigid motion that best maps the contact points at the
previous configuration onto the same points at the current one (Kabsch/Procrustes on the centred
contact points; the rotation is the closest rotation to their cross-covariance, by SVD with the
determinant fixed: what ``roma.special_procrustes`` computes, in numpy for speed).

Frames: everything here is expressed in the **hand base frame** (the motion of the object in the
hand frame does not depend on the camera->hand calibration). ``T_hand_obj`` ``(4, 4)`` float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = ["ContactMotion", "contact_mask", "rigid_motion_from_contacts"]


@dataclass
class ContactMotion:
    """Result of :func:`rigid_motion_from_contacts`.

    ``M`` ``(4, 4)`` float64: motion in the hand frame, ``p_now ~ M p_prev`` for contact points.
    ``rotation_ok``: False when the contacts were degenerate (collinear / fewer than 3) and
    only the centroid translation was used (``M`` then has identity rotation).
    ``residual_rms`` [m]: RMS of the rigid fit; ``spread`` [m]: RMS distance of the contacts from
    their centroid (rotation uncertainty ~ residual / spread).
    """

    M: np.ndarray
    n_contacts: int
    rotation_ok: bool
    residual_rms: float
    spread: float


def contact_mask(sdf: torch.Tensor, threshold: float, max_penetration: float = 0.02) -> torch.Tensor:
    """Contact points: ``-max_penetration < sdf < threshold`` (``sdf`` ``(..., N)``, metres) -> bool ``(..., N)``.

    Points slightly inside the object count as contacts (estimates are imperfect); points deep
    inside (more than ``max_penetration``) come from a wrong pose and are ignored.
    """
    if threshold <= 0:
        raise ValueError(f"contact threshold must be > 0, got {threshold}")
    return (sdf < threshold) & (sdf > -max_penetration)


def rigid_motion_from_contacts(p_prev: torch.Tensor, p_now: torch.Tensor, weights: Optional[torch.Tensor] = None,
                               min_contacts: int = 3, min_spread: float = 0.005) -> ContactMotion:
    """Rigid motion mapping contact points ``p_prev`` ``(N, 3)`` onto ``p_now`` ``(N, 3)`` (torch or numpy).

    Centred Kabsch: ``R = special_procrustes(sum_i w_i (p_now_i - c_now)(p_prev_i - c_prev)^T)``,
    ``t = c_now - R c_prev``. With fewer than ``min_contacts`` points or a contact set whose
    second principal spread is below ``min_spread`` (collinear: a rotation about that line is not
    observable) only the centroid translation is returned (``rotation_ok=False``).
    With no contacts ``M`` is the identity.
    """
    if tuple(p_prev.shape) != tuple(p_now.shape) or len(p_prev.shape) != 2 or p_prev.shape[-1] != 3:
        raise ValueError(f"contact points must both be (N, 3), got {tuple(p_prev.shape)} and {tuple(p_now.shape)}")
    n = p_prev.shape[0]
    M = np.eye(4)
    if n == 0:
        return ContactMotion(M, 0, False, 0.0, 0.0)
    # float64 numpy for the 3x3 algebra (this runs at the joint-state rate; torch op overhead dominates)
    a = np.asarray(p_prev.detach().cpu() if torch.is_tensor(p_prev) else p_prev, dtype=np.float64)
    b = np.asarray(p_now.detach().cpu() if torch.is_tensor(p_now) else p_now, dtype=np.float64)
    w = np.ones(n) if weights is None else np.asarray(weights.detach().cpu() if torch.is_tensor(weights) else weights,
                                                       dtype=np.float64)
    w = w / w.sum()
    ca, cb = w @ a, w @ b
    a0, b0 = a - ca, b - cb
    cov_a = (w[:, None] * a0).T @ a0
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(cov_a), 0, None))  # ascending principal spreads
    spread = float(np.sqrt(w @ (a0 * a0).sum(-1)))
    rotation_ok = n >= min_contacts and float(sv[1]) >= min_spread
    if rotation_ok:
        # closest rotation to the cross-covariance (what roma.special_procrustes computes; numpy's
        # 3x3 SVD costs ~20 us against ~1 ms for roma's torch path at this size)
        U, _, Vt = np.linalg.svd((w[:, None] * b0).T @ a0)
        d = np.sign(np.linalg.det(U @ Vt))
        R = (U * np.array([1.0, 1.0, d])) @ Vt
    else:
        R = np.eye(3)
    t = cb - R @ ca
    res = b - (a @ R.T + t)
    M[:3, :3] = R
    M[:3, 3] = t
    return ContactMotion(M, n, rotation_ok, float(np.sqrt(w @ (res * res).sum(-1))), spread)
