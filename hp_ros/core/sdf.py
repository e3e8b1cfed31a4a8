"""Signed distance and normals of query points to a triangle mesh (NVIDIA Warp), differentiable in torch.

``MeshSDF(vertices, faces)`` builds one ``wp.Mesh`` (BVH) in the mesh's own frame; queries are batched
over frames by flattening ``(B, N, 3)`` into one kernel launch.

Conventions
-----------
* Sign: **negative inside**, positive outside, metres.
* ``normals`` returned by :meth:`MeshSDF.query` are the unit SDF gradient (pointing to increasing
  distance, i.e. outward): ``sign * (p - c) / |p - c|`` with ``c`` the closest surface point. On a
  face interior this is the face normal; near edges/corners it is the direction from the closest
  point. For points (almost) on the surface (``|p - c| < 1e-9`` m) the face normal is used.
* Gradients are **analytic**: ``d sdf / d p = normals``. This is the exact gradient of the distance
  to a fixed triangle mesh almost everywhere and costs one multiply in torch (a ``wp.Tape`` backward
  re-runs the BVH query: DESIGN.md measured ~2x the forward time). Second derivatives (curvature) are not
  provided (``once_differentiable``); ``torch.autograd.functional.jacobian`` works,
  ``torch.func.jacrev`` cannot go through the Warp call.
* ``max_dist`` (default 0.1 m) bounds the BVH search: points outside the mesh's bounding box and
  farther than ``max_dist`` from the surface get ``sdf = +max_dist`` and a zero gradient; points
  inside the bounding box are always resolved exactly (so deep-inside points keep their negative
  distance). The bound matters for speed: 2,000 hand points against the 3k-face built-in cracker
  box take ~60 ms with a 1 m bound and ~1 ms with 0.1 m (most hand points are far away).

Sign determination and open meshes
----------------------------------
The input is cleaned with trimesh (duplicate vertices merged, e.g. UV seams of textured meshes).
``sign="auto"`` (default) uses Warp's angle-weighted pseudo-normal test
(``wp.mesh_query_point_sign_normal``: fast, exact for watertight consistently-oriented meshes) when
the mesh is watertight with consistent winding, and otherwise falls back to the generalised winding
number (``wp.mesh_query_point_sign_winding_number``, robust for open / self-overlapping meshes such as
a union of link meshes; ~5x slower measured on a 32k-face sphere) and emits a ``UserWarning`` saying so. ``sign="normal"`` raises
``ValueError`` for a mesh that is not watertight; ``sign="winding"`` always uses the winding number.
A watertight mesh with inward-facing normals (negative volume) is flipped (``self.flipped = True``).
Non-finite vertices, out-of-range indices or an empty mesh raise ``ValueError``.

Compile cost
------------
The kernels of this module are compiled by Warp on first launch (measured 3.1-3.9 s on this 2-core
machine, ~11 s while other jobs load it); the binaries are cached in
:func:`hp_ros.core.warp_setup.kernel_cache_dir`, so later processes only load them (~3 ms; the
first ``MeshSDF`` also imports trimesh, ~0.5 s). Call :func:`warm_up` at start-up (e.g. in a node's
constructor) to pay that cost before the first frame.

Speed (this machine, noisy): 2,000 points in a -5..+20 mm shell around a 15,872-face mesh,
forward + backward ~4-5 ms (``benchmarks/bench_physics.py``); the Warp CPU launch is single-threaded
and the fixed per-call overhead is ~0.1 ms.
"""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import torch

from hp_ros.core import se3
from hp_ros.core.warp_setup import get_warp

__all__ = ["MeshSDF", "signed_distance_world", "warm_up"]

wp = get_warp()

_SURFACE_EPS = wp.constant(1.0e-9)
_UNBOUNDED = wp.constant(1.0e6)


@wp.func
def _inside_box(p: wp.vec3, lo: wp.vec3, hi: wp.vec3):
    return p[0] >= lo[0] and p[1] >= lo[1] and p[2] >= lo[2] and p[0] <= hi[0] and p[1] <= hi[1] and p[2] <= hi[2]


@wp.func
def _write_result(i: int, p: wp.vec3, q: wp.MeshQueryPoint, mesh: wp.uint64, max_dist: float,
                  sdf: wp.array(dtype=float), normal: wp.array(dtype=wp.vec3)):
    if q.result:
        c = wp.mesh_eval_position(mesh, q.face, q.u, q.v)
        d = p - c
        dist = wp.length(d)
        s = float(1.0)
        if q.sign < 0.0:
            s = -1.0
        sdf[i] = s * dist
        if dist > _SURFACE_EPS:
            normal[i] = d * (s / dist)
        else:
            normal[i] = wp.mesh_eval_face_normal(mesh, q.face)
    else:
        sdf[i] = max_dist
        normal[i] = wp.vec3(0.0, 0.0, 0.0)


# A point with no surface within max_dist is outside when it is outside the mesh's bounding box
# (clamped to +max_dist); inside the box it may be deep inside, so it is re-queried without a radius.
@wp.kernel
def _sdf_sign_normal_kernel(mesh: wp.uint64, points: wp.array(dtype=wp.vec3), max_dist: float,
                            lo: wp.vec3, hi: wp.vec3,
                            sdf: wp.array(dtype=float), normal: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    p = points[i]
    q = wp.mesh_query_point_sign_normal(mesh, p, max_dist)
    if (not q.result) and _inside_box(p, lo, hi):
        q = wp.mesh_query_point_sign_normal(mesh, p, _UNBOUNDED)
    _write_result(i, p, q, mesh, max_dist, sdf, normal)


@wp.kernel
def _sdf_sign_winding_kernel(mesh: wp.uint64, points: wp.array(dtype=wp.vec3), max_dist: float,
                             lo: wp.vec3, hi: wp.vec3,
                             sdf: wp.array(dtype=float), normal: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    p = points[i]
    q = wp.mesh_query_point_sign_winding_number(mesh, p, max_dist)
    if (not q.result) and _inside_box(p, lo, hi):
        q = wp.mesh_query_point_sign_winding_number(mesh, p, _UNBOUNDED)
    _write_result(i, p, q, mesh, max_dist, sdf, normal)


class _SDFFunction(torch.autograd.Function):
    """points (M, 3) -> sdf (M,), normals (M, 3); backward d sdf / d p = normals."""

    @staticmethod
    def forward(ctx, points: torch.Tensor, mesh_sdf: "MeshSDF"):
        sdf, normals = mesh_sdf._query_flat(points)
        ctx.mark_non_differentiable(normals)
        ctx.save_for_backward(normals)
        return sdf, normals

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_sdf: torch.Tensor, grad_normals: torch.Tensor):
        (normals,) = ctx.saved_tensors
        return grad_sdf[:, None] * normals, None


class MeshSDF:
    """Signed distance field of a triangle mesh (Warp BVH), queried in the mesh's own frame.

    Args:
        vertices: ``(V, 3)`` tensor/array, metres, mesh frame.
        faces: ``(F, 3)`` integer tensor/array.
        sign: ``"auto"`` | ``"normal"`` | ``"winding"`` (see module docstring).
        max_dist: search radius (m); points outside the bounding box and farther away than this get
            ``sdf = max_dist`` and a zero gradient (see the module docstring).

    Attributes:
        vertices ``(V', 3)`` float32 and faces ``(F', 3)`` int64 tensors of the cleaned mesh,
        bounds ``(2, 3)``, is_watertight, sign_method (``"normal"`` or ``"winding"``), flipped;
        device: the torch device of the queries, Warp's BVH and kernels on the same one (``device``
        argument: ``cpu`` or ``cuda:N``, see :mod:`hp_ros.core.device`).
    """

    def __init__(self, vertices, faces, sign: str = "auto", max_dist: float = 0.1, device="cpu"):
        import trimesh

        if sign not in ("auto", "normal", "winding"):
            raise ValueError(f"sign must be 'auto', 'normal' or 'winding', got {sign!r}")
        if not max_dist > 0:
            raise ValueError(f"max_dist must be > 0, got {max_dist}")
        v = np.asarray(torch.as_tensor(vertices).detach().cpu(), dtype=np.float64)
        f = np.asarray(torch.as_tensor(faces).detach().cpu())
        if v.ndim != 2 or v.shape[1] != 3 or len(v) < 3:
            raise ValueError(f"vertices must have shape (V>=3, 3), got {tuple(v.shape)}")
        if f.ndim != 2 or f.shape[1] != 3 or len(f) < 1:
            raise ValueError(f"faces must have shape (F>=1, 3), got {tuple(f.shape)}")
        if not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"faces must be integer indices, got dtype {f.dtype}")
        if not np.isfinite(v).all():
            raise ValueError("vertices contain NaN or inf")
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"face indices out of range [0, {len(v)}): min {f.min()}, max {f.max()}")

        tm = trimesh.Trimesh(vertices=v, faces=f, process=True)  # merges duplicate (seam) vertices
        if len(tm.faces) == 0:
            raise ValueError("mesh has no non-degenerate faces")
        self.is_watertight = bool(tm.is_watertight and tm.is_winding_consistent)
        self.flipped = False
        if self.is_watertight and tm.volume < 0:
            tm.invert()  # inward-facing winding: flip so that "inside" means inside
            self.flipped = True

        if sign == "normal" and not self.is_watertight:
            raise ValueError(
                "mesh is not watertight (or has inconsistent winding): the pseudo-normal sign test would "
                "be wrong; repair the mesh or use sign='winding' (or 'auto') for the winding-number fallback")
        if sign == "auto" and not self.is_watertight:
            warnings.warn("MeshSDF: mesh is not watertight; using the winding-number sign test "
                          "(robust for open meshes, slower)", UserWarning, stacklevel=2)
        self.sign_method = "normal" if (sign == "normal" or (sign == "auto" and self.is_watertight)) else "winding"
        self.max_dist = float(max_dist)

        self.vertices = torch.tensor(np.array(tm.vertices), dtype=torch.float32)
        self.faces = torch.tensor(np.array(tm.faces), dtype=torch.int64)
        self.bounds = torch.tensor(np.array(tm.bounds), dtype=torch.float32)
        self.device = torch.device(device)
        self._wp_device = "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index or 0}"
        self._wp_points = wp.array(self.vertices.numpy(), dtype=wp.vec3, device=self._wp_device)
        self._wp_indices = wp.array(self.faces.numpy().astype(np.int32).reshape(-1), dtype=wp.int32,
                                    device=self._wp_device)
        self._mesh = wp.Mesh(points=self._wp_points, indices=self._wp_indices,
                             support_winding_number=self.sign_method == "winding")
        self._lo = wp.vec3(*self.bounds[0].tolist())
        self._hi = wp.vec3(*self.bounds[1].tolist())
        self._kernel = _sdf_sign_normal_kernel if self.sign_method == "normal" else _sdf_sign_winding_kernel
        self._recorded: dict = {}  # point count -> buffers and recorded launch (_launch_for)
        self._recorded_lock = threading.Lock()

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    # point counts whose launch is kept (the tracker queries the same few sizes every frame:
    # its contact candidates, its penetration samples)
    _RECORDED_SIZES = 8
    _BUCKET, _BUCKET_MAX = 16, 256  # query sizes up to _BUCKET_MAX round up to a multiple of _BUCKET

    def _launch_for(self, m: int):
        """``(points (m, 3), sdf (m,), normals (m, 3), wp.Launch)``: buffers and a recorded launch
        of the query kernel for ``m`` points, made at the first query of that size. A recorded
        launch costs ~0.02 ms instead of ~0.1 ms of argument packing per ``wp.launch`` (the
        tracker queries its contact candidates at every joint state)."""
        rec = self._recorded.pop(m, None)
        if rec is None:
            kw = dict(dtype=torch.float32, device=self.device)
            p, sdf, normals = torch.empty(m, 3, **kw), torch.empty(m, **kw), torch.empty(m, 3, **kw)
            launch = wp.launch(self._kernel, dim=m, device=self._wp_device, record_cmd=True,
                               inputs=[self._mesh.id, wp.from_torch(p, dtype=wp.vec3), self.max_dist, self._lo,
                                       self._hi],
                               outputs=[wp.from_torch(sdf), wp.from_torch(normals, dtype=wp.vec3)])
            rec = (p, sdf, normals, launch)
            if len(self._recorded) >= self._RECORDED_SIZES:
                self._recorded.pop(next(iter(self._recorded)))
        self._recorded[m] = rec  # most recently used last
        return rec

    def _query_flat(self, points: torch.Tensor):
        """points (M, 3) any float dtype, on ``device`` -> sdf (M,), normals (M, 3) in the same dtype
        (no autograd)."""
        m = points.shape[0]
        if m == 0:
            empty = torch.empty(0, dtype=points.dtype, device=self.device)
            return empty, empty.reshape(0, 3)
        # launches are recorded per size rounded up to a bucket: the tracker's contact queries vary
        # in size (only candidates near the object go), and a new size costs a full launch (~0.15 ms)
        size = m if m > self._BUCKET_MAX else -(-m // self._BUCKET) * self._BUCKET
        with self._recorded_lock:  # the buffers are shared by the callers of one size
            p, sdf, normals, launch = self._launch_for(size)
            p[:m].copy_(points.detach())
            if size > m:
                p[m:] = p[0]  # padding: a valid point, its answer unused
            launch.launch()
            sdf, normals = sdf[:m].to(points.dtype, copy=True), normals[:m].to(points.dtype, copy=True)
        return sdf, normals

    def distance_numpy(self, points: np.ndarray) -> np.ndarray:
        """Signed distance ``(M,)`` float64 of points ``(M, 3)`` (numpy, mesh frame), without normals
        and outside autograd: the tracker's contact test at every joint state (the autograd function
        and torch's per-op cost there were most of the test's time)."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64), device=self.device)
        return self._query_flat(pts.reshape(-1, 3))[0].cpu().numpy()

    def query(self, points: torch.Tensor):
        """Signed distance and outward unit normal (SDF gradient) of points in the mesh frame.

        Args:
            points: ``(N, 3)`` or ``(B, N, 3)`` (any leading batch dims), metres, on ``device``.
        Returns:
            ``sdf`` ``(...)`` (negative inside) differentiable w.r.t. ``points``,
            ``normals`` ``(..., 3)`` (not differentiable).
        """
        if not torch.is_tensor(points) or points.shape[-1:] != (3,) or not points.is_floating_point():
            raise ValueError(f"points must be a float tensor of shape (..., 3), got "
                             f"{getattr(points, 'shape', type(points))}")
        if points.device != self.device:
            raise ValueError(f"MeshSDF runs Warp on {self.device}; pass tensors on it (got {points.device})")
        lead = points.shape[:-1]
        sdf, normals = _SDFFunction.apply(points.reshape(-1, 3), self)
        return sdf.reshape(lead), normals.reshape(*lead, 3)

    __call__ = query

    def contains(self, points: torch.Tensor) -> torch.Tensor:
        """Inside test ``(...)`` bool for points ``(..., 3)`` in the mesh frame (no gradient)."""
        with torch.no_grad():
            return self.query(points)[0] < 0

    def query_world(self, points_world: torch.Tensor, T_world_object: torch.Tensor):
        """See :func:`signed_distance_world`."""
        return signed_distance_world(self, points_world, T_world_object)


def signed_distance_world(mesh_sdf: MeshSDF, points_world: torch.Tensor, T_world_object: torch.Tensor):
    """SDF of points given in another frame, differentiable w.r.t. points and pose.

    Args:
        mesh_sdf: the object's :class:`MeshSDF` (object frame).
        points_world: ``(B, N, 3)`` (or ``(N, 3)``) points in the world/camera frame.
        T_world_object: ``(B, 4, 4)`` (or ``(4, 4)``) object poses.
    Returns:
        ``sdf`` ``(B, N)`` and ``normals_world`` ``(B, N, 3)`` (outward unit normals rotated into the
        world frame; not differentiable).
    """
    if T_world_object.shape[-2:] != (4, 4):
        raise ValueError(f"T_world_object must have shape (..., 4, 4), got {tuple(T_world_object.shape)}")
    p_obj = se3.transform_points(se3.invert(T_world_object), points_world)
    sdf, n_obj = mesh_sdf.query(p_obj)
    R = T_world_object[..., :3, :3].detach()
    n_world = n_obj @ R.transpose(-1, -2)
    return sdf, n_world


def warm_up() -> float:
    """Compile (or load from the kernel cache) this module's Warp kernels; returns seconds spent.

    First run on a machine: 2-4 s (compilation). Later processes: tens of ms (cache load).
    """
    t0 = time.perf_counter()
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    pts = torch.full((1, 3), 0.1)
    MeshSDF(v, f, sign="normal").query(pts)
    MeshSDF(v, f, sign="winding").query(pts)
    return time.perf_counter() - t0
