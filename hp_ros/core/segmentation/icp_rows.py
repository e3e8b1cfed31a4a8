"""The rows of the model backend's ICP system in two Warp kernels (:class:`IcpRows`).

One step of :class:`~hp_ros.core.segmentation.model.ModelObjectMasker`'s robust ICP needs, for a
pose ``T = [R | t]`` and a gate, two sets of residual rows ``r + J xi`` (``xi = (v, w)``, a left
perturbation of the pose in the camera frame):

* **measured points to the surface**: the signed distance ``s`` of each depth point ``p`` (camera
  frame) in the object's signed-distance grid (trilinear, with the grid's interpolated gradient as
  the outward normal ``n``, rotated to the camera); kept when ``|s| < gate`` and the point sees the
  surface's camera-facing side (``n . p < 0``); row ``J = [-n, p x -n]``, ``r = s``.
* **model samples to depth**: each camera-facing surface sample ``q`` (normal ``m``) in front of the
  camera projected to its pixel (rounded half to even, as ``np.rint``); kept when that pixel's
  depth ``d`` is valid, not excluded (the hand) and within ``gate`` of ``q_z``; row
  ``J = [m, q x m]``, ``r = (q . m)(1 - d / q_z)`` (point-to-plane along the ray).

The numpy version (``ModelObjectMasker._rows_numpy``: ``signed_distance`` + ``_visible_samples``)
cost ~0.5 ms per step in some thirty array operations, four steps a frame; here each set is one
single-threaded Warp CPU launch over buffers recorded once (the pose, gate, strides and counts are
written into small parameter arrays, not packed per launch), and numpy only gathers the kept rows.
The two agree to float64 rounding (``test/test_segmentation_model.py``).
"""
from __future__ import annotations

import numpy as np

from hp_ros.core.warp_setup import get_warp

__all__ = ["IcpRows"]

wp = get_warp()

# fparams: R row-major (0-8), t (9-11), gate (12); iparams: count, stride, then for the points:
# the camera-facing check on, for the samples: an exclude mask given
_F_GATE = 12


@wp.func
def _pose_r(f: wp.array(dtype=wp.float64)):
    return wp.mat33d(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8])


@wp.func
def _pose_t(f: wp.array(dtype=wp.float64)):
    return wp.vec3d(f[9], f[10], f[11])


@wp.func
def _keep_row(J: wp.array2d(dtype=wp.float64), r: wp.array(dtype=wp.float64), ok: wp.array(dtype=wp.int32),
              k: int, x: wp.vec3d, m: wp.vec3d, residual: wp.float64):
    """Row ``k``: ``J = [m, x x m]``, ``r = residual``, kept."""
    xm = wp.cross(x, m)
    for a in range(3):
        J[k, a] = m[a]
        J[k, 3 + a] = xm[a]
    r[k] = residual
    ok[k] = 1


@wp.kernel
def _point_rows(points: wp.array(dtype=wp.vec3d), fparams: wp.array(dtype=wp.float64),
                iparams: wp.array(dtype=wp.int32), field: wp.array2d(dtype=wp.float32), lo: wp.vec3d,
                inv_voxel: wp.float64, top: wp.vec3i, stride: wp.vec3i,
                J: wp.array2d(dtype=wp.float64), r: wp.array(dtype=wp.float64), ok: wp.array(dtype=wp.int32)):
    k = wp.tid()
    i = k * iparams[1]
    ok[k] = 0
    if i >= iparams[0]:
        return
    R = _pose_r(fparams)
    t = _pose_t(fparams)
    p = points[i]
    c = (wp.transpose(R) @ (p - t) - lo) * inv_voxel
    for a in range(3):   # outside the grid: +inf, never kept
        if c[a] < wp.float64(0.0) or c[a] > wp.float64(top[a]):
            return
    i0 = wp.vec3i(wp.min(int(c[0]), top[0] - 1), wp.min(int(c[1]), top[1] - 1), wp.min(int(c[2]), top[2] - 1))
    f = wp.vec3d(c[0] - wp.float64(i0[0]), c[1] - wp.float64(i0[1]), c[2] - wp.float64(i0[2]))
    base = i0[0] * stride[0] + i0[1] * stride[1] + i0[2]
    val = wp.vec4d()
    for a in range(2):
        wa = wp.where(a == 1, f[0], wp.float64(1.0) - f[0])
        for b in range(2):
            wb = wp.where(b == 1, f[1], wp.float64(1.0) - f[1])
            for e in range(2):
                w = wa * wb * wp.where(e == 1, f[2], wp.float64(1.0) - f[2])
                node = base + a * stride[0] + b * stride[1] + e
                val += w * wp.vec4d(wp.float64(field[0, node]), wp.float64(field[1, node]),
                                    wp.float64(field[2, node]), wp.float64(field[3, node]))
    s = val[0]
    g = wp.vec3d(val[1], val[2], val[3])
    g = g / wp.max(wp.length(g), wp.float64(1e-12))
    n = R @ g
    if wp.abs(s) >= fparams[_F_GATE] or (iparams[2] != 0 and wp.dot(n, p) >= wp.float64(0.0)):
        return
    _keep_row(J, r, ok, k, p, -n, s)


@wp.kernel
def _sample_rows(samples: wp.array(dtype=wp.vec3d), normals: wp.array(dtype=wp.vec3d),
                 fparams: wp.array(dtype=wp.float64), iparams: wp.array(dtype=wp.int32), K: wp.mat33d,
                 depth: wp.array2d(dtype=wp.float32), exclude: wp.array2d(dtype=wp.uint8),
                 J: wp.array2d(dtype=wp.float64), r: wp.array(dtype=wp.float64), ok: wp.array(dtype=wp.int32)):
    k = wp.tid()
    j = k * iparams[1]
    ok[k] = 0
    if j >= iparams[0]:
        return
    R = _pose_r(fparams)
    q = R @ samples[j] + _pose_t(fparams)
    m = R @ normals[j]
    z = q[2]
    if wp.dot(m, q) >= wp.float64(0.0) or z <= wp.float64(0.02):
        return
    kq = K @ q
    u = wp.rint(kq[0] / z)
    v = wp.rint(kq[1] / z)
    H = depth.shape[0]
    W = depth.shape[1]
    if u < wp.float64(0.0) or u >= wp.float64(W) or v < wp.float64(0.0) or v >= wp.float64(H):
        return
    ui = int(u)
    vi = int(v)
    d = wp.float64(depth[vi, ui])
    if iparams[2] != 0:
        if exclude[vi, ui] != wp.uint8(0):
            return
    if not (d > wp.float64(0.0)) or wp.abs(d - z) >= fparams[_F_GATE]:
        return
    _keep_row(J, r, ok, k, q, m, wp.dot(q, m) * (wp.float64(1.0) - d / z))


class IcpRows:
    """Residual rows of the model backend's ICP (see the module doc) for one object grid, one
    camera and one set of surface samples.

    Args:
        field: ``(4, nodes)`` float32 signed distance and its gradient per grid node (x-major).
        shape: grid nodes per axis ``(nx, ny, nz)``; ``lo`` ``(3,)`` grid origin, ``voxel`` spacing (m).
        K: ``(3, 3)`` intrinsics; ``samples``, ``normals``: ``(M, 3)`` object-frame surface samples
            and outward normals.

    Per frame :meth:`set_frame` (depth ``(H, W)`` float32, exclude ``(H, W)`` bool or None) and
    :meth:`set_points` (measured points ``(N, 3)``); per step :meth:`rows`. Not thread-safe (one
    per masker).
    """

    def __init__(self, field: np.ndarray, shape, lo, voxel: float, K, samples: np.ndarray, normals: np.ndarray):
        shape = tuple(int(s) for s in shape)
        self._field = wp.array(np.ascontiguousarray(field, dtype=np.float32), dtype=wp.float32, device="cpu")
        self._lo = wp.vec3d(*[float(x) for x in lo])
        self._inv_voxel = float(1.0 / voxel)
        self._top = wp.vec3i(shape[0] - 1, shape[1] - 1, shape[2] - 1)
        self._stride = wp.vec3i(shape[1] * shape[2], shape[2], 1)
        self._K = wp.mat33d(*np.asarray(K, dtype=np.float64).reshape(-1).tolist())
        self._fp = wp.zeros(16, dtype=wp.float64, device="cpu")
        self._ip_points = wp.zeros(4, dtype=wp.int32, device="cpu")
        self._ip_samples = wp.zeros(4, dtype=wp.int32, device="cpu")
        self._fp_np, self._ipp_np, self._ips_np = self._fp.numpy(), self._ip_points.numpy(), self._ip_samples.numpy()
        m = len(samples)
        self._samples = wp.array(np.ascontiguousarray(samples, dtype=np.float64), dtype=wp.vec3d, device="cpu")
        self._normals = wp.array(np.ascontiguousarray(normals, dtype=np.float64), dtype=wp.vec3d, device="cpu")
        self._ips_np[0] = m
        self._ipp_np[2] = 1
        self._s_out = self._outputs(m)
        self._no_exclude = wp.zeros((1, 1), dtype=wp.uint8, device="cpu")
        self._sample_launch = None   # recorded at the first set_frame (needs a depth image)
        self._p_cap, self._point_launch = 0, None
        self._n_points = 0

    @staticmethod
    def _outputs(n: int):
        """``(J (n, 6), r (n,), ok (n,))`` Warp arrays with their numpy views."""
        arrs = (wp.zeros((n, 6), dtype=wp.float64, device="cpu"), wp.zeros(n, dtype=wp.float64, device="cpu"),
                wp.zeros(n, dtype=wp.int32, device="cpu"))
        return arrs, tuple(a.numpy() for a in arrs)

    def set_frame(self, depth_m: np.ndarray, exclude) -> None:
        """This frame's depth ``(H, W)`` float32 metres (0 = invalid) and excluded pixels (bool or None);
        both must stay unchanged until the frame's last :meth:`rows`."""
        self._depth = np.ascontiguousarray(depth_m, dtype=np.float32)   # kept alive: Warp views it
        self._exclude = None if exclude is None else np.ascontiguousarray(exclude).view(np.uint8)
        d = wp.array(self._depth, dtype=wp.float32, device="cpu", copy=False)
        x = self._no_exclude if self._exclude is None else wp.array(self._exclude, dtype=wp.uint8, device="cpu",
                                                                     copy=False)
        self._ips_np[2] = 0 if self._exclude is None else 1
        (J, r, ok), _ = self._s_out
        if self._sample_launch is None:
            self._sample_launch = wp.launch(_sample_rows, dim=len(self._samples), device="cpu", record_cmd=True,
                                            inputs=[self._samples, self._normals, self._fp, self._ip_samples,
                                                    self._K, d, x], outputs=[J, r, ok])
        else:
            self._sample_launch.set_param_at_index(5, d)
            self._sample_launch.set_param_at_index(6, x)

    def set_points(self, points: np.ndarray) -> None:
        """The measured points ``(N, 3)`` (camera frame) of this frame's steps."""
        n = len(points)
        if n > self._p_cap:  # buffers (and the recorded launch) grow to the next power of two
            cap = 1 << max(int(np.ceil(np.log2(max(n, 1)))), 8)
            self._p_buf = wp.zeros(cap, dtype=wp.vec3d, device="cpu")
            self._p_np = self._p_buf.numpy()
            self._p_out = self._outputs(cap)
            (J, r, ok), _ = self._p_out
            self._point_launch = wp.launch(_point_rows, dim=cap, device="cpu", record_cmd=True,
                                           inputs=[self._p_buf, self._fp, self._ip_points, self._field, self._lo,
                                                   self._inv_voxel, self._top, self._stride], outputs=[J, r, ok])
            self._p_cap = cap
        if n:
            self._p_np[:n] = points
        self._n_points = self._ipp_np[0] = n

    def near_surface(self, points: np.ndarray, T: np.ndarray, margin: float) -> np.ndarray:
        """``(N,)`` bool: the points ``(N, 3)`` (camera frame) within ``margin`` of the surface at
        pose ``T`` (inside the grid; either side). They become the points of :meth:`rows`."""
        self.set_points(points)
        if not len(points):
            return np.zeros(0, bool)
        self._set_pose(T, margin)
        self._ipp_np[1:3] = (1, 0)   # every point, no camera-facing check
        try:
            self._point_launch.set_dim(len(points))
            self._point_launch.launch()
        finally:
            self._ipp_np[2] = 1
        return self._p_out[1][2][:len(points)] != 0

    def _set_pose(self, T: np.ndarray, gate: float) -> None:
        fp = self._fp_np
        fp[:9] = T[:3, :3].reshape(-1)
        fp[9:12] = T[:3, 3]
        fp[_F_GATE] = gate

    def rows(self, T: np.ndarray, gate: float, point_stride: int = 1, sample_stride: int = 1):
        """The kept rows at pose ``T`` ``(4, 4)``: ``(J1 (n1, 6), r1 (n1,), J2 (n2, 6), r2 (n2,))`` of
        the measured points (every ``point_stride``-th) and of the model samples (every
        ``sample_stride``-th), each in input order."""
        self._set_pose(T, gate)
        out = []
        for launch, ip, n, stride, views in (
                (self._point_launch, self._ipp_np, self._n_points, point_stride, self._p_out[1] if self._p_cap else None),
                (self._sample_launch, self._ips_np, len(self._samples), sample_stride, self._s_out[1])):
            dim = -(-n // max(int(stride), 1))
            if launch is None or dim == 0:
                out += [np.zeros((0, 6)), np.zeros(0)]
                continue
            ip[1] = max(int(stride), 1)
            launch.set_dim(dim)
            launch.launch()
            J, r, ok = views
            i = np.flatnonzero(ok[:dim])
            out += [np.take(J, i, axis=0), np.take(r, i)]
        return tuple(out)
