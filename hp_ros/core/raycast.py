"""Exact (non-differentiable) ray-cast renderer on NVIDIA Warp.

Part of the synthetic-generator work (``hp_ros.core.synth``); also a reference renderer for
tests of the differentiable renderer.

All instances (object, hand, background, markers, ...) are merged into **one** ``wp.Mesh``
with a per-face instance id; one ray per pixel through its centre with ``wp.mesh_query_ray``.
The BVH is rebuilt only when the topology (face array) changes; when only vertex positions move
(the usual case frame to frame) it is refitted (``mesh.refit()``).

Speed (a Warp CPU kernel runs on one thread; a BVH ray costs ~0.5 us on this machine class):

* :meth:`RayCaster.render_hits` finds the same nearest hits by rasterising: each triangle tests
  the rays of the pixels inside its projected bounding box (z-buffer), so the cost follows the
  covered image area; ~4-5x faster than the BVH for a hand + object covering ~20 % of a
  640x480 image. :meth:`RayCaster.render_pixels` casts BVH rays through listed pixels only;
* every launch is split over ``threads`` concurrent launches (Warp releases the GIL while a CPU
  kernel runs) that write disjoint outputs; results do not depend on the thread count.

Conventions (docs/ARCHITECTURE.md): camera frame REP-103 optical (x right, y down, z
forward); pixel ``(u, v)`` has its centre at integer coordinates; meshes are given in the
camera frame in metres. Outputs for an ``H x W`` image:

* ``depth`` ``(H, W)`` float32: **z-depth** along the optical axis (not the ray length), 0 where
  no surface is hit;
* ``instance`` ``(H, W)`` int32: index of the hit instance (order of ``render``'s list), -1
  for no hit;
* ``normal`` ``(H, W, 3)`` float32: unit face normal of the hit triangle, turned to face the
  camera (``n . ray <= 0``), zeros where no hit;
* ``color`` ``(H, W, 3)`` float32: per-vertex colour interpolated with the hit's barycentric
  coordinates, zeros where no hit;
* ``face`` ``(H, W)`` int32: face index within its instance (-1 for no hit).
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from hp_ros.core.warp_setup import get_warp

__all__ = ["RaycastResult", "RayCaster", "MeshInstance", "default_threads"]

wp = get_warp()


@wp.kernel
def _raycast_kernel(mesh: wp.uint64, dirs: wp.array(dtype=wp.vec3), pixels: wp.array(dtype=wp.int32),
                    first: int, stride: int, max_t: float, face_instance: wp.array(dtype=wp.int32),
                    face_offset: wp.array(dtype=wp.int32), indices: wp.array(dtype=wp.int32),
                    colors: wp.array(dtype=wp.vec3),
                    depth: wp.array(dtype=float), instance: wp.array(dtype=wp.int32),
                    normal: wp.array(dtype=wp.vec3), color: wp.array(dtype=wp.vec3),
                    face: wp.array(dtype=wp.int32)):
    i = first + stride * wp.tid()  # output slot; the ray is the one through pixel pixels[i]
    d = dirs[pixels[i]]  # z component is 1, so the hit parameter t is the z-depth
    q = wp.mesh_query_ray(mesh, wp.vec3(0.0, 0.0, 0.0), d, max_t)
    if q.result:
        depth[i] = q.t
        f = q.face
        instance[i] = face_instance[f]
        face[i] = f - face_offset[face_instance[f]]
        n = wp.normalize(q.normal)
        if wp.dot(n, d) > 0.0:
            n = -n
        normal[i] = n
        c0 = colors[indices[3 * f + 0]]
        c1 = colors[indices[3 * f + 1]]
        c2 = colors[indices[3 * f + 2]]
        color[i] = c0 * q.u + c1 * q.v + c2 * (1.0 - q.u - q.v)
    else:
        depth[i] = 0.0
        instance[i] = -1
        face[i] = -1
        normal[i] = wp.vec3(0.0, 0.0, 0.0)
        color[i] = wp.vec3(0.0, 0.0, 0.0)


@wp.func
def _ray_triangle(d: wp.vec3, p0: wp.vec3, e1: wp.vec3, e2: wp.vec3):
    """Ray from the camera centre along ``d`` against the triangle (p0, p0 + e1, p0 + e2)
    (Moller-Trumbore): ``(t, b1, b2)`` with barycentric weights b1 of vertex 1, b2 of vertex 2;
    ``t = -1`` for no hit. A 1e-6 slack on the edges closes cracks between neighbours."""
    pv = wp.cross(d, e2)
    det = wp.dot(e1, pv)
    if wp.abs(det) < 1.0e-20:
        return wp.vec3(-1.0, 0.0, 0.0)
    inv = 1.0 / det
    tv = -p0
    b1 = wp.dot(tv, pv) * inv
    if b1 < -1.0e-6 or b1 > 1.000001:
        return wp.vec3(-1.0, 0.0, 0.0)
    qv = wp.cross(tv, e1)
    b2 = wp.dot(d, qv) * inv
    if b2 < -1.0e-6 or b1 + b2 > 1.000001:
        return wp.vec3(-1.0, 0.0, 0.0)
    return wp.vec3(wp.dot(e2, qv) * inv, b1, b2)


@wp.kernel
def _zbuffer_kernel(points: wp.array(dtype=wp.vec3), indices: wp.array(dtype=wp.int32),
                    dirs: wp.array(dtype=wp.vec3), fx: float, fy: float, cx: float, cy: float, skew: float,
                    width: int, height: int, row_first: int, row_stride: int, max_t: float,
                    zbuf: wp.array(dtype=float), fbuf: wp.array(dtype=wp.int32)):
    # one triangle: test the rays of the pixels in its projected bounding box, keep the nearest.
    # Only rows with row % row_stride == row_first: concurrent launches own disjoint rows.
    f = wp.tid()
    p0 = points[indices[3 * f + 0]]
    p1 = points[indices[3 * f + 1]]
    p2 = points[indices[3 * f + 2]]
    y0 = p0[1] / p0[2]
    y1 = p1[1] / p1[2]
    y2 = p2[1] / p2[2]
    u0 = fx * p0[0] / p0[2] + skew * y0 + cx
    u1 = fx * p1[0] / p1[2] + skew * y1 + cx
    u2 = fx * p2[0] / p2[2] + skew * y2 + cx
    v0 = fy * y0 + cy
    v1 = fy * y1 + cy
    v2 = fy * y2 + cy
    ua = wp.max(int(wp.ceil(wp.min(u0, wp.min(u1, u2)) - 0.01)), 0)
    ub = wp.min(int(wp.floor(wp.max(u0, wp.max(u1, u2)) + 0.01)), width - 1)
    va = wp.max(int(wp.ceil(wp.min(v0, wp.min(v1, v2)) - 0.01)), 0)
    vb = wp.min(int(wp.floor(wp.max(v0, wp.max(v1, v2)) + 0.01)), height - 1)
    if ua > ub or va > vb:
        return
    va = va + ((row_first - va) % row_stride + row_stride) % row_stride
    e1 = p1 - p0
    e2 = p2 - p0
    for v in range(va, vb + 1, row_stride):
        for u in range(ua, ub + 1):
            pix = v * width + u
            t = _ray_triangle(dirs[pix], p0, e1, e2)[0]
            if t > 0.0 and t < max_t and t < zbuf[pix]:
                zbuf[pix] = t
                fbuf[pix] = f


@wp.kernel
def _shade_hits_kernel(points: wp.array(dtype=wp.vec3), indices: wp.array(dtype=wp.int32),
                       dirs: wp.array(dtype=wp.vec3), pixels: wp.array(dtype=wp.int32), first: int, stride: int,
                       zbuf: wp.array(dtype=float), fbuf: wp.array(dtype=wp.int32),
                       face_instance: wp.array(dtype=wp.int32), face_offset: wp.array(dtype=wp.int32),
                       colors: wp.array(dtype=wp.vec3),
                       depth: wp.array(dtype=float), instance: wp.array(dtype=wp.int32),
                       normal: wp.array(dtype=wp.vec3), color: wp.array(dtype=wp.vec3),
                       face: wp.array(dtype=wp.int32)):
    # the per-ray outputs for the triangle that won a pixel's z-buffer test
    i = first + stride * wp.tid()
    pix = pixels[i]
    f = fbuf[pix]
    d = dirs[pix]
    p0 = points[indices[3 * f + 0]]
    e1 = points[indices[3 * f + 1]] - p0
    e2 = points[indices[3 * f + 2]] - p0
    h = _ray_triangle(d, p0, e1, e2)
    depth[i] = zbuf[pix]
    instance[i] = face_instance[f]
    face[i] = f - face_offset[face_instance[f]]
    n = wp.normalize(wp.cross(e1, e2))
    if wp.dot(n, d) > 0.0:
        n = -n
    normal[i] = n
    color[i] = (colors[indices[3 * f + 0]] * (1.0 - h[1] - h[2]) + colors[indices[3 * f + 1]] * h[1]
                + colors[indices[3 * f + 2]] * h[2])


_MAX_THREADS = 8
_load_lock = threading.Lock()
_kernel_loaded = False  # set after the first (serial) launch has compiled/loaded the kernel


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_MAX_THREADS, thread_name_prefix="raycast")


def default_threads() -> int:
    """Ray-cast threads used when not given: the number of usable CPUs (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_THREADS))


@dataclass
class MeshInstance:
    """One mesh to render, in the camera frame.

    ``vertices`` ``(V, 3)`` metres, ``faces`` ``(F, 3)`` int, ``colors`` ``(V, 3)`` in [0, 1] or
    one ``(3,)`` colour for the whole mesh (None = grey).
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: Optional[np.ndarray] = None


@dataclass
class RaycastResult:
    """Per-pixel ray-cast output (see the module doc for each field)."""

    depth: np.ndarray      # (H, W) float32, z-depth in metres, 0 = no hit
    instance: np.ndarray   # (H, W) int32, -1 = no hit
    normal: np.ndarray     # (H, W, 3) float32
    color: np.ndarray      # (H, W, 3) float32
    face: np.ndarray       # (H, W) int32, -1 = no hit


class RayCaster:
    """Pinhole ray caster for a fixed camera ``K`` ``(3, 3)`` and image size ``width x height``.

    ``threads``: concurrent kernel launches per cast (default :func:`default_threads`).

    Example::

        rc = RayCaster(K, 640, 480)
        out = rc.render([MeshInstance(v_obj, f_obj, c_obj), MeshInstance(v_hand, f_hand, c_hand)])
        out.depth, out.instance  # (480, 640)
    """

    def __init__(self, K, width: int, height: int, max_depth: float = 100.0, threads: Optional[int] = None):
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
            raise ValueError(f"K must be a (3, 3) intrinsic matrix with positive focal lengths, got {K}")
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if not max_depth > 0:
            raise ValueError(f"max_depth must be > 0, got {max_depth}")
        threads = default_threads() if threads is None else int(threads)
        if not 1 <= threads <= _MAX_THREADS:
            raise ValueError(f"threads must be in [1, {_MAX_THREADS}], got {threads}")
        self.threads = threads
        self.K = K
        self.width, self.height = int(width), int(height)
        self.max_depth = float(max_depth)
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
        y = (v - cy) / fy
        x = (u - cx - s * y) / fx
        dirs = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3).astype(np.float32)
        self._dirs = wp.array(dirs, dtype=wp.vec3, device="cpu")
        self._mesh = None          # wp.Mesh (BVH) over self._points, built on first BVH cast
        self._points = None
        self._bvh_fresh = False
        self._faces_key = None
        self._all_pixels = None
        self._zbuf = None          # z-buffer / winning face of render_hits, (H*W,)
        self.rebuilds = 0  # number of BVH (re)builds, for tests and diagnostics
        self.refits = 0

    def _prepare(self, instances: Sequence[MeshInstance]):
        if len(instances) == 0:
            raise ValueError("nothing to render: give at least one MeshInstance")
        verts, faces, colors, inst, offsets = [], [], [], [], []
        v_off = f_off = 0
        for k, m in enumerate(instances):
            v = np.asarray(m.vertices, dtype=np.float32)
            f = np.asarray(m.faces)
            if v.ndim != 2 or v.shape[1] != 3:
                raise ValueError(f"instance {k}: vertices must be (V, 3), got {v.shape}")
            if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
                raise ValueError(f"instance {k}: faces must be integer (F, 3), got {f.shape} {f.dtype}")
            if len(f) and (f.min() < 0 or f.max() >= len(v)):
                raise ValueError(f"instance {k}: face indices out of range [0, {len(v)})")
            if not np.isfinite(v).all():
                raise ValueError(f"instance {k}: vertices contain NaN or inf")
            c = np.full((len(v), 3), 0.5, np.float32) if m.colors is None else np.asarray(m.colors, np.float32)
            if c.shape == (3,):
                c = np.tile(c, (len(v), 1))
            if c.shape != (len(v), 3):
                raise ValueError(f"instance {k}: colors must be (V, 3) or (3,), got {c.shape}")
            verts.append(v)
            faces.append(f.astype(np.int32) + v_off)
            colors.append(c)
            inst.append(np.full(len(f), k, np.int32))
            offsets.append(f_off)
            v_off += len(v)
            f_off += len(f)
        faces_all = np.concatenate(faces).reshape(-1)
        if faces_all.size == 0:
            raise ValueError("nothing to render: all instances have zero faces")
        return (np.concatenate(verts), faces_all, np.concatenate(colors), np.concatenate(inst),
                np.asarray(offsets, np.int32))

    def _upload(self, instances: Sequence[MeshInstance]):
        """Copy the merged vertices/faces/colours to Warp; the BVH is built or refitted lazily."""
        verts, faces, colors, inst, offsets = self._prepare(instances)
        key = (faces.shape, hash(faces.tobytes()))
        if self._points is not None and key == self._faces_key and self._points.shape[0] == len(verts):
            self._points.assign(verts)  # same topology: a BVH only needs a refit
            self._bvh_fresh = False
        else:
            self._points = wp.array(verts, dtype=wp.vec3, device="cpu")
            self._indices = wp.array(faces, dtype=wp.int32, device="cpu")
            self._face_instance = wp.array(inst, dtype=wp.int32, device="cpu")
            self._faces_key = key
            self._mesh = None
        self._face_offset = wp.array(offsets, dtype=wp.int32, device="cpu")
        self._colors = wp.array(colors, dtype=wp.vec3, device="cpu")
        self._num_faces = len(faces) // 3
        self._min_z = float(verts[faces, 2].min())  # over vertices that belong to a face

    def _update_mesh(self, instances: Sequence[MeshInstance]):
        self._upload(instances)
        if self._mesh is None:
            self._mesh = wp.Mesh(points=self._points, indices=self._indices)
            self.rebuilds += 1
        elif not self._bvh_fresh:
            self._mesh.refit()
            self.refits += 1
        self._bvh_fresh = True

    def _shares(self, n: int) -> int:
        """Concurrent launches for ``n`` rays (tiny jobs are not worth a thread hand-off)."""
        return max(1, min(self.threads, n // 4096))

    def _launch_split(self, k: int, launch):
        """Run ``launch(first, k)`` for ``first`` in ``0..k-1`` concurrently (shares of one job)."""
        global _kernel_loaded
        if not _kernel_loaded or k == 1:
            with _load_lock:  # the first launch compiles/loads the module: never concurrently
                for first in range(k):
                    launch(first, k)
                _kernel_loaded = True
        else:
            for f in [_pool().submit(launch, first, k) for first in range(k)]:
                f.result()

    @staticmethod
    def _outputs(n: int):
        """Fresh per-ray numpy outputs and zero-copy Warp views of them (Warp writes in place)."""
        res = RaycastResult(depth=np.empty(n, np.float32), instance=np.empty(n, np.int32),
                            normal=np.empty((n, 3), np.float32), color=np.empty((n, 3), np.float32),
                            face=np.empty(n, np.int32))
        outs = [wp.array(res.depth, dtype=float, device="cpu", copy=False),
                wp.array(res.instance, dtype=wp.int32, device="cpu", copy=False),
                wp.array(res.normal, dtype=wp.vec3, device="cpu", copy=False),
                wp.array(res.color, dtype=wp.vec3, device="cpu", copy=False),
                wp.array(res.face, dtype=wp.int32, device="cpu", copy=False)]
        return res, outs

    def _cast(self, pixels_wp, n: int) -> RaycastResult:
        res, outs = self._outputs(n)
        if n == 0:
            return res
        # Warp runs a CPU kernel on one thread but releases the GIL while it runs, so the rays are
        # dealt out to concurrent launches (interleaved slots: even share of the costly hits),
        # each writing its own output slots of the shared arrays.
        def launch(first: int, stride: int):
            wp.launch(_raycast_kernel, dim=(n - first + stride - 1) // stride, device="cpu",
                      inputs=[self._mesh.id, self._dirs, pixels_wp, first, stride, self.max_depth,
                              self._face_instance, self._face_offset, self._indices, self._colors],
                      outputs=outs)

        self._launch_split(self._shares(n), launch)
        return res

    def render(self, instances: Sequence[MeshInstance]) -> RaycastResult:
        """Ray-cast ``instances`` (camera frame) through every pixel; instance ids are their list
        positions. Fields are ``(H, W)`` / ``(H, W, 3)`` images."""
        self._update_mesh(instances)
        n = self.width * self.height
        if self._all_pixels is None:
            self._all_pixels = wp.array(np.arange(n, dtype=np.int32), dtype=wp.int32, device="cpu")
        r = self._cast(self._all_pixels, n)
        H, W = self.height, self.width
        return RaycastResult(depth=r.depth.reshape(H, W), instance=r.instance.reshape(H, W),
                             normal=r.normal.reshape(H, W, 3), color=r.color.reshape(H, W, 3),
                             face=r.face.reshape(H, W))

    def render_pixels(self, instances: Sequence[MeshInstance], pixels) -> RaycastResult:
        """Ray-cast ``instances`` through the listed pixels only.

        ``pixels`` ``(N,)`` int: flat pixel indices ``v * width + u``. Returns per-ray fields of
        shape ``(N,)`` / ``(N, 3)`` in the order of ``pixels`` (same meaning as :meth:`render`).
        The cost is linear in the number of rays: cast only where something can be hit.
        """
        pixels = np.ascontiguousarray(pixels, dtype=np.int32).reshape(-1)
        n_pix = self.width * self.height
        if len(pixels) and (pixels.min() < 0 or pixels.max() >= n_pix):
            raise ValueError(f"pixel indices must lie in [0, {n_pix}) for a {self.width}x{self.height} image")
        self._update_mesh(instances)
        return self._cast(wp.array(pixels, dtype=wp.int32, device="cpu", copy=False), len(pixels))

    def render_hits(self, instances: Sequence[MeshInstance], near: float = 1e-4):
        """Every pixel's ray against ``instances``, returning only the rays that hit something.

        Returns ``(pixels, result)``: ``pixels`` ``(N,)`` int32 ascending flat indices
        ``v * width + u`` of the hit pixels, ``result`` their per-ray fields ``(N,)`` /
        ``(N, 3)`` (meaning as in :meth:`render`). Same rays and nearest-hit rule as
        :meth:`render`, found by rasterising instead of BVH traversal: each triangle tests the rays
        of the pixels in its projected bounding box (z-buffer). That costs ~ the covered area, not
        ~ the number of pixels times a tree walk: several times faster for meshes covering part of
        the image. Depth agrees with :meth:`render` to float rounding (~1e-6 relative); where two
        triangles tie (shared edges) either may win. Meshes reaching behind ``near`` (z in metres)
        fall back to the BVH cast.
        """
        self._upload(instances)
        H, W = self.height, self.width
        if self._min_z <= near:
            full = self.render(instances)
            pixels = np.flatnonzero(full.instance.reshape(-1) >= 0).astype(np.int32)
            return pixels, RaycastResult(
                depth=full.depth.reshape(-1)[pixels], instance=full.instance.reshape(-1)[pixels],
                normal=full.normal.reshape(-1, 3)[pixels], color=full.color.reshape(-1, 3)[pixels],
                face=full.face.reshape(-1)[pixels])
        if self._zbuf is None:
            self._zbuf, self._fbuf = np.empty(H * W, np.float32), np.empty(H * W, np.int32)
            self._zbuf_wp = wp.array(self._zbuf, dtype=float, device="cpu", copy=False)
            self._fbuf_wp = wp.array(self._fbuf, dtype=wp.int32, device="cpu", copy=False)
        self._zbuf.fill(self.max_depth)
        self._fbuf.fill(-1)
        K = self.K

        def raster(first: int, stride: int):  # concurrent launches own interleaved image rows
            wp.launch(_zbuffer_kernel, dim=self._num_faces, device="cpu",
                      inputs=[self._points, self._indices, self._dirs, K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                              K[0, 1], W, H, first, stride, self.max_depth, self._zbuf_wp, self._fbuf_wp])

        self._launch_split(min(self.threads, H), raster)
        pixels = np.flatnonzero(self._fbuf >= 0).astype(np.int32)
        n = len(pixels)
        res, outs = self._outputs(n)
        if n:
            pixels_wp = wp.array(pixels, dtype=wp.int32, device="cpu", copy=False)

            def shade(first: int, stride: int):
                wp.launch(_shade_hits_kernel, dim=(n - first + stride - 1) // stride, device="cpu",
                          inputs=[self._points, self._indices, self._dirs, pixels_wp, first, stride,
                                  self._zbuf_wp, self._fbuf_wp, self._face_instance, self._face_offset,
                                  self._colors],
                          outputs=outs)

            self._launch_split(self._shares(n), shade)
        return pixels, res
