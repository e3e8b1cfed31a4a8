"""Hard z-buffer of projected triangles in one Warp kernel (no autograd): the per-frame depth
rasters of the segmentation (the hand's surface, the object model at the tracked pose).

Same coverage rule as :func:`hp_ros.core.render.rasterize` (a pixel is covered when its centre
lies inside the triangle, edges inclusive; perspective-correct depth, the nearest face wins), but
one thread per face walking its clipped bounding box with an atomic minimum per pixel, instead of
a chain of vectorised torch / numpy steps: for the hand's ~3k faces at half resolution that is
~0.2 ms against ~3 ms (``benchmarks/bench_segmentation.py``). The Warp CPU launch is
single-threaded, so it costs one core's time and no thread pool.
"""
from __future__ import annotations

import numpy as np

from hp_ros.core.warp_setup import get_warp

__all__ = ["ZBuffer", "zbuffer"]

wp = get_warp()


@wp.kernel
def _zbuffer_faces(uv: wp.array(dtype=wp.vec2), z: wp.array(dtype=float), faces: wp.array(dtype=wp.vec3i),
                   near: float, front_only: int, zbuf: wp.array2d(dtype=float)):
    f = wp.tid()
    H = zbuf.shape[0]
    W = zbuf.shape[1]
    i0 = faces[f][0]
    i1 = faces[f][1]
    i2 = faces[f][2]
    z0 = z[i0]
    z1 = z[i1]
    z2 = z[i2]
    if not (z0 > near and z1 > near and z2 > near):   # also a NaN depth
        return
    p0 = uv[i0]
    p1 = uv[i1]
    p2 = uv[i2]
    area2 = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p2[0] - p0[0]) * (p1[1] - p0[1])
    if not wp.isfinite(area2) or wp.abs(area2) <= 1.0e-12:   # also a non-finite vertex
        return
    if front_only != 0 and area2 >= 0.0:   # camera-facing faces wind clockwise in the image
        return
    # bounding box of pixel centres, clipped to the image (as floats first: huge coordinates)
    fx0 = wp.max(wp.ceil(wp.min(wp.min(p0[0], p1[0]), p2[0])), 0.0)
    fx1 = wp.min(wp.floor(wp.max(wp.max(p0[0], p1[0]), p2[0])), float(W - 1))
    fy0 = wp.max(wp.ceil(wp.min(wp.min(p0[1], p1[1]), p2[1])), 0.0)
    fy1 = wp.min(wp.floor(wp.max(wp.max(p0[1], p1[1]), p2[1])), float(H - 1))
    if fx1 < fx0 or fy1 < fy0:
        return
    sgn = wp.sign(area2)
    # edge functions (edge k opposite vertex k), inside >= 0
    a0 = (p1[1] - p2[1]) * sgn
    b0 = (p2[0] - p1[0]) * sgn
    c0 = (p1[0] * p2[1] - p2[0] * p1[1]) * sgn
    a1 = (p2[1] - p0[1]) * sgn
    b1 = (p0[0] - p2[0]) * sgn
    c1 = (p2[0] * p0[1] - p0[0] * p2[1]) * sgn
    a2 = (p0[1] - p1[1]) * sgn
    b2 = (p1[0] - p0[0]) * sgn
    c2 = (p0[0] * p1[1] - p1[0] * p0[1]) * sgn
    # 1/z is affine in the pixel coordinates (perspective-correct depth)
    inv_a = 1.0 / (c0 + c1 + c2)
    zx = (a0 / z0 + a1 / z1 + a2 / z2) * inv_a
    zy = (b0 / z0 + b1 / z1 + b2 / z2) * inv_a
    zc = (c0 / z0 + c1 / z1 + c2 / z2) * inv_a
    for y in range(int(fy0), int(fy1) + 1):
        fy = float(y)
        for x in range(int(fx0), int(fx1) + 1):
            fx = float(x)
            if a0 * fx + b0 * fy + c0 >= 0.0 and a1 * fx + b1 * fy + c1 >= 0.0 and a2 * fx + b2 * fy + c2 >= 0.0:
                wp.atomic_min(zbuf, y, x, 1.0 / (zx * fx + zy * fy + zc))


class ZBuffer:
    """:func:`zbuffer` for one fixed face table ``(F, 3)`` (checked and converted once)."""

    def __init__(self, faces: np.ndarray, n_vertices: int):
        faces = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
        if len(faces) and (faces.min() < 0 or faces.max() >= n_vertices):
            raise ValueError(f"face indices must lie in [0, {n_vertices})")
        self.n_vertices, self.n_faces = int(n_vertices), len(faces)
        self._faces = wp.array(faces, dtype=wp.vec3i, device="cpu")

    def __call__(self, uv: np.ndarray, z: np.ndarray, size: tuple, near: float = 1e-4,
                 front_only: bool = False) -> np.ndarray:
        H, W = int(size[0]), int(size[1])
        out = np.full((max(H, 0), max(W, 0)), np.inf, np.float32)
        if H <= 0 or W <= 0 or self.n_faces == 0:
            return out
        uv = np.ascontiguousarray(uv, dtype=np.float32).reshape(-1, 2)
        z = np.ascontiguousarray(z, dtype=np.float32).reshape(-1)
        if len(uv) != self.n_vertices or len(z) != self.n_vertices:
            raise ValueError(f"expected {self.n_vertices} vertices, got uv {len(uv)}, z {len(z)}")
        zb = wp.array(out, dtype=float, device="cpu")
        wp.launch(_zbuffer_faces, dim=self.n_faces, device="cpu",
                  inputs=[wp.array(uv, dtype=wp.vec2, device="cpu"), wp.array(z, dtype=float, device="cpu"),
                          self._faces, float(near), int(bool(front_only)), zb])
        return zb.numpy()


def zbuffer(uv: np.ndarray, z: np.ndarray, faces: np.ndarray, size: tuple, near: float = 1e-4,
            front_only: bool = False) -> np.ndarray:
    """Depth ``(H, W)`` float32 of the nearest covering triangle per pixel, ``inf`` where none.

    Args:
        uv: ``(V, 2)`` pixel coordinates of the vertices (pixel centres at integers).
        z: ``(V,)`` vertex depths (m). Faces with any vertex at ``z <= near`` or not finite are
            skipped.
        faces: ``(F, 3)`` vertex indices.
        size: ``(H, W)``.
        front_only: keep only faces wound clockwise in the image (the camera-facing faces of an
            outward-wound mesh).
    """
    return ZBuffer(faces, len(np.asarray(z).reshape(-1)))(uv, z, size, near, front_only)
