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
                   fparams: wp.array(dtype=float), iparams: wp.array(dtype=wp.int32), zbuf: wp.array2d(dtype=float)):
    # fparams: near; iparams: raster height, width (zbuf may be larger), front_only
    f = wp.tid()
    near = fparams[0]
    H = iparams[0]
    W = iparams[1]
    front_only = iparams[2]
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
    """:func:`zbuffer` for one fixed face table ``(F, 3)`` (checked and converted once).

    The launch is recorded once with persistent buffers (vertices, a raster that grows to the
    largest size asked for, the size and settings in small parameter arrays): a call copies the
    vertices in and the raster out, without packing the kernel's arguments again (~0.1 ms of
    Python per ``wp.launch``). Calls are serialised (one lock per instance)."""

    def __init__(self, faces: np.ndarray, n_vertices: int):
        import threading

        faces = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
        if len(faces) and (faces.min() < 0 or faces.max() >= n_vertices):
            raise ValueError(f"face indices must lie in [0, {n_vertices})")
        self.n_vertices, self.n_faces = int(n_vertices), len(faces)
        self._faces = wp.array(faces, dtype=wp.vec3i, device="cpu")
        self._uv = wp.zeros(self.n_vertices, dtype=wp.vec2, device="cpu")
        self._z = wp.zeros(self.n_vertices, dtype=float, device="cpu")
        self._fp = wp.zeros(1, dtype=float, device="cpu")
        self._ip = wp.zeros(3, dtype=wp.int32, device="cpu")
        self._uv_np, self._z_np = self._uv.numpy(), self._z.numpy()
        self._fp_np, self._ip_np = self._fp.numpy(), self._ip.numpy()
        self._raster = None     # (wp.array2d, numpy view, recorded launch), made / grown on demand
        self._lock = threading.Lock()

    def _raster_for(self, H: int, W: int):
        r = self._raster
        if r is None or r[1].shape[0] < H or r[1].shape[1] < W:
            cap = (H, W) if r is None else (max(H, r[1].shape[0]), max(W, r[1].shape[1]))
            zb = wp.empty(cap, dtype=float, device="cpu")
            launch = wp.launch(_zbuffer_faces, dim=self.n_faces, device="cpu", record_cmd=True,
                               inputs=[self._uv, self._z, self._faces, self._fp, self._ip, zb])
            r = self._raster = (zb, zb.numpy(), launch)
        return r

    def __call__(self, uv: np.ndarray, z: np.ndarray, size: tuple, near: float = 1e-4,
                 front_only: bool = False) -> np.ndarray:
        H, W = int(size[0]), int(size[1])
        if H <= 0 or W <= 0 or self.n_faces == 0:
            return np.full((max(H, 0), max(W, 0)), np.inf, np.float32)
        uv = np.asarray(uv).reshape(-1, 2)
        z = np.asarray(z).reshape(-1)
        if len(uv) != self.n_vertices or len(z) != self.n_vertices:
            raise ValueError(f"expected {self.n_vertices} vertices, got uv {len(uv)}, z {len(z)}")
        with self._lock:
            _, out, launch = self._raster_for(H, W)
            self._uv_np[:] = uv
            self._z_np[:] = z
            self._fp_np[0] = near
            self._ip_np[:] = (H, W, int(bool(front_only)))
            view = out[:H, :W]
            view.fill(np.inf)
            launch.launch()
            return view.copy()


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
