"""Rigid-body helpers of the generator (numpy, float64): poses, rotations, point transforms, random
directions, and :func:`kabsch` (the quasistatic object motion)."""
from __future__ import annotations

import numpy as np
import torch


def kabsch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rigid ``(4, 4)`` T minimising ``sum |T x_i - y_i|^2`` (no scaling, no weights; roma), float64.

    ``x``, ``y``: ``(N, 3)`` (or ``(B, N, 3)`` -> ``(B, 4, 4)``), N >= 3 non-collinear.
    """
    import roma

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    R, t = roma.rigid_points_registration(xt, yt)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R.numpy()
    T[..., :3, 3] = t.numpy()
    T[..., 3, 3] = 1.0
    return T


def _rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Rotation vector(s) ``(..., 3)`` -> rotation matrices ``(..., 3, 3)``."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(rv, dtype=np.float64)).as_matrix()


def _pose(R=None, t=None) -> np.ndarray:
    """``(4, 4)`` pose from a rotation ``(3, 3)`` and a translation ``(3,)`` (identity where None)."""
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = R
    if t is not None:
        T[:3, 3] = t
    return T


def _smoothstep(x):
    """``3x^2 - 2x^3`` on ``x`` clipped to [0, 1]: 0 -> 1 with zero slope at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Points ``p`` ``(..., N, 3)`` mapped by poses ``T`` ``(..., 4, 4)``."""
    return p @ T[..., :3, :3].swapaxes(-1, -2) + T[..., None, :3, 3]


def _random_unit(rng) -> np.ndarray:
    """A uniformly random direction ``(3,)`` (three normal draws from ``rng``)."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)
