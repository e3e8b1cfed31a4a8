"""SE(3)/SO(3) helpers on batched torch tensors, thin over roma.

Conventions used everywhere in hp_ros:

* A pose is a homogeneous matrix ``T_a_b`` of shape ``(..., 4, 4)`` that maps points
  expressed in frame ``b`` into frame ``a``: ``p_a = T_a_b @ p_b``.
* Quaternions are in ROS order ``(x, y, z, w)`` (the order of geometry_msgs and of roma).
* A twist / tangent vector ``xi`` has shape ``(..., 6)`` and is ``(v, w)``: translation part
  first, rotation vector second. ``se3_exp`` uses the simple "translation + rotation vector"
  retraction (``R = exp(w)``, ``t = v``), which is what the optimisers and the EKF error
  state use: it is smooth, decoupled and well-conditioned for small errors.
"""
from __future__ import annotations

import roma
import torch

__all__ = [
    "so3_exp", "so3_log", "quat_to_matrix", "matrix_to_quat", "make_pose", "se3_exp",
    "se3_log", "compose", "invert", "transform_points", "rotation_angle", "apply_delta",
    "pose_from_xyz_quat", "pose_to_xyz_quat",
]


def so3_exp(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``(..., 3)`` -> rotation matrix ``(..., 3, 3)``."""
    return roma.rotvec_to_rotmat(rotvec)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` -> rotation vector ``(..., 3)``."""
    return roma.rotmat_to_rotvec(R)


def quat_to_matrix(q_xyzw: torch.Tensor) -> torch.Tensor:
    """Quaternion ``(..., 4)`` in (x, y, z, w) order -> rotation ``(..., 3, 3)``.

    The quaternion is normalised first, so slightly denormalised message data is accepted.
    """
    return roma.unitquat_to_rotmat(q_xyzw / q_xyzw.norm(dim=-1, keepdim=True))


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation ``(..., 3, 3)`` -> unit quaternion ``(..., 4)`` (x, y, z, w), w >= 0."""
    q = roma.rotmat_to_unitquat(R)
    return torch.where(q[..., 3:4] < 0, -q, q)


def make_pose(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rotation ``(..., 3, 3)`` and translation ``(..., 3)`` -> pose ``(..., 4, 4)``."""
    batch = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    T = torch.zeros(*batch, 4, 4, dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Tangent vector ``(..., 6)`` = (v, w) -> pose ``(..., 4, 4)`` with R = exp(w), t = v."""
    return make_pose(so3_exp(xi[..., 3:]), xi[..., :3])


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """Pose ``(..., 4, 4)`` -> (t, log R) ``(..., 6)``; inverse of :func:`se3_exp`."""
    return torch.cat([T[..., :3, 3], so3_log(T[..., :3, :3])], dim=-1)


def compose(T_ab: torch.Tensor, T_bc: torch.Tensor) -> torch.Tensor:
    """``T_ac = T_ab @ T_bc`` for batched poses ``(..., 4, 4)``."""
    return T_ab @ T_bc


def invert(T: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid pose ``(..., 4, 4)`` using R^T (exact, no general inverse)."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return make_pose(Rt, -(Rt @ T[..., :3, 3:4])[..., 0])


def transform_points(T: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Apply poses ``(..., 4, 4)`` to points ``(..., N, 3)`` -> ``(..., N, 3)``."""
    return p @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (radians) of rotations ``(..., 3, 3)`` -> ``(...)``."""
    return so3_log(R).norm(dim=-1)


def apply_delta(T: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """Left-perturb a pose: ``T' = exp(xi) * T`` with the rotation applied about T's origin.

    i.e. ``R' = exp(w) R`` and ``t' = t + v``: the error-state parametrisation used by the
    EKF and the refinement (translation error in the parent frame, rotation error about the
    object's own centre expressed in the parent frame).
    """
    R = so3_exp(xi[..., 3:]) @ T[..., :3, :3]
    return make_pose(R, T[..., :3, 3] + xi[..., :3])


def pose_from_xyz_quat(xyz, quat_xyzw, dtype=torch.float32) -> torch.Tensor:
    """Position ``(..., 3)`` and quaternion ``(..., 4)`` (x, y, z, w) -> pose ``(..., 4, 4)``."""
    xyz = torch.as_tensor(xyz, dtype=dtype)
    q = torch.as_tensor(quat_xyzw, dtype=dtype)
    return make_pose(quat_to_matrix(q), xyz)


def pose_to_xyz_quat(T: torch.Tensor):
    """Pose ``(..., 4, 4)`` -> (position ``(..., 3)``, quaternion ``(..., 4)`` x, y, z, w)."""
    return T[..., :3, 3], matrix_to_quat(T[..., :3, :3])
