"""Consistency measures of a pose estimate against ground truth (NEES), with the symmetry axis of
a body of revolution taken out (its spin is unobservable from its shape)."""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["symmetry_axis", "normalized_error_squared"]


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
