"""What the camera sees of the object: the visible-surface statistics behind the centre
observation (the mask centroid and median depth belong to the visible surface, not to the model
centre)."""
from __future__ import annotations

import numpy as np

__all__ = ["VisibleSurface"]


class VisibleSurface:
    """Small surface elements of an object (centroids ``pts`` ``(n, 3)``, unit normals ``nrm``
    ``(n, 3)``, areas ``area`` ``(n,)``, object frame): its faces subdivided to edges <= diameter /
    ``pieces`` (deterministic, ~3e3 elements: against 24 pieces, ~8e3 elements at 2.7x the cost, the
    offset moves by < 0.05 px and its pose derivative by < 0.1 % over random views of the box and
    the can)."""

    def __init__(self, obj, pieces: int = 16):
        import trimesh

        v, f = obj.vertices.double().numpy(), obj.faces.numpy()
        size = float(np.linalg.norm(v.max(0) - v.min(0))) / pieces
        v, f = trimesh.remesh.subdivide_to_size(v, f, max_edge=size, max_iter=20)
        m = trimesh.Trimesh(v, f, process=False)
        # element centroids and unit normals as coordinate rows (3, n), areas (n,)
        self._pts_rows = np.ascontiguousarray(np.asarray(m.triangles_center).T)
        self._nrm_rows = np.ascontiguousarray(np.asarray(m.face_normals).T)
        self.area = np.asarray(m.area_faces)

    def stats(self, T: np.ndarray, K: np.ndarray, center_obj: np.ndarray):
        """Offset ``(3,)`` and spread ``(3,)`` of the visible surface at ``T_cam_obj`` ``(4, 4)`` seen
        with the camera matrix ``K`` ``(3, 3)``.

        Offset: the visible surface's centroid pixel and median depth minus the projection and
        depth of ``center_obj`` ``(3,)`` (model centre, object frame). Visibility is back-face
        culling (exact for convex objects), each element weighted by its pixel footprint
        ``area cos(theta) / z^2``; the median is interpolated (smooth in the pose). Spread: the
        footprint-weighted standard deviations of its pixels (u, v) and depth. No element seen:
        zeros."""
        # coordinates as rows (3, n): every step is a contiguous pass (an (n, 3) layout's per-row
        # reductions and small matmuls cost ~10x more; this runs 11 times per centre derivative)
        R, t = T[:3, :3], T[:3, 3]
        x, y, z = R @ self._pts_rows + t[:, None]
        nx, ny, nz = R @ self._nrm_rows
        cos = -(nx * x + ny * y + nz * z) / np.sqrt(x * x + y * y + z * z)
        w = np.where(cos > 0, self.area * cos / (z * z), 0.0)
        total = w.sum()
        if total <= 0:
            return np.zeros(3), np.zeros(3)
        w /= total
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        u, v = fx * x / z + cx, fy * y / z + cy
        c = R @ center_obj + t
        order = np.argsort(z)
        w_o = w[order]
        z_med = float(np.interp(0.5, np.cumsum(w_o) - 0.5 * w_o, z[order]))
        mean = np.array([w @ u, w @ v, w @ z])
        var = np.array([w @ (u - mean[0]) ** 2, w @ (v - mean[1]) ** 2, w @ (z - mean[2]) ** 2])
        offset = np.array([mean[0] - (fx * c[0] / c[2] + cx), mean[1] - (fy * c[1] / c[2] + cy), z_med - c[2]])
        return offset, np.sqrt(np.maximum(var, 0.0))
