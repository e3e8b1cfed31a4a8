"""Small SE(3) / SO(3) algebra and the pinhole projection the EKF needs, in float64 numpy.

Perturbations follow :func:`hp_ros.core.se3.apply_delta`: ``xi = (v, w)``, ``R' = exp(w) R``,
``t' = t + v`` (translation error in the parent frame, rotation error about the child's origin
expressed in the parent frame). numpy, not torch: these run on every predict/update on single
``(4, 4)`` matrices, where torch/roma per-call overhead costs more than the maths.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from hp_ros.core import se3

__all__ = ["skew", "so3_exp", "so3_log", "apply_delta_np", "pose_error", "so3_right_jacobian_inv",
           "propagate_jacobian", "point_jacobian", "project", "camera_error_map"]


def skew(a: np.ndarray) -> np.ndarray:
    """``(3,)`` -> ``(3, 3)`` cross-product matrix."""
    return np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` of the rotation vector ``w`` ``(3,)`` (Rodrigues)."""
    th = float(np.linalg.norm(w))
    K = skew(w)
    if th < 1e-9:
        return np.eye(3) + K
    return np.eye(3) + math.sin(th) / th * K + (1 - math.cos(th)) / th ** 2 * (K @ K)


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector ``(3,)`` of ``(3, 3)`` ``R``. Near pi it falls back to :func:`se3.so3_log`
    (the closed form loses its axis there)."""
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
    out[:3, :3] = so3_exp(xi[3:6]) @ T[:3, :3]
    out[:3, 3] = T[:3, 3] + xi[:3]
    return out


def pose_error(T_true: np.ndarray, T_est: np.ndarray) -> np.ndarray:
    """Error ``xi`` ``(6,)`` with ``T_true = apply_delta(T_est, xi)`` (translation, rotation vector)."""
    return np.concatenate([T_true[:3, 3] - T_est[:3, 3], so3_log(T_true[:3, :3] @ T_est[:3, :3].T)])


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
