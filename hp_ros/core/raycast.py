"""Exact (non-differentiable) ray-cast renderer on NVIDIA Warp.

Part of the synthetic-generator work (``hp_ros.core.synth``); also a reference renderer for
tests of the differentiable renderer.

All instances (object, hand, background, markers, ...) are merged into **one** ``wp.Mesh``
with a per-face instance id; one kernel launch casts one ray per pixel through its centre with
``wp.mesh_query_ray``. The BVH is rebuilt only when the topology (face array) changes; when
only vertex positions move (the usual case frame to frame) it is refitted (``mesh.refit()``).

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

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from hp_ros.core.warp_setup import get_warp

__all__ = ["RaycastResult", "RayCaster", "MeshInstance"]

wp = get_warp()


@wp.kernel
def _raycast_kernel(mesh: wp.uint64, dirs: wp.array(dtype=wp.vec3), max_t: float,
                    face_instance: wp.array(dtype=wp.int32), face_offset: wp.array(dtype=wp.int32),
                    indices: wp.array(dtype=wp.int32), colors: wp.array(dtype=wp.vec3),
                    depth: wp.array(dtype=float), instance: wp.array(dtype=wp.int32),
                    normal: wp.array(dtype=wp.vec3), color: wp.array(dtype=wp.vec3),
                    face: wp.array(dtype=wp.int32)):
    i = wp.tid()
    d = dirs[i]  # z component is 1, so the hit parameter t is the z-depth
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

    Example::

        rc = RayCaster(K, 640, 480)
        out = rc.render([MeshInstance(v_obj, f_obj, c_obj), MeshInstance(v_hand, f_hand, c_hand)])
        out.depth, out.instance  # (480, 640)
    """

    def __init__(self, K, width: int, height: int, max_depth: float = 100.0):
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
            raise ValueError(f"K must be a (3, 3) intrinsic matrix with positive focal lengths, got {K}")
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if not max_depth > 0:
            raise ValueError(f"max_depth must be > 0, got {max_depth}")
        self.K = K
        self.width, self.height = int(width), int(height)
        self.max_depth = float(max_depth)
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
        y = (v - cy) / fy
        x = (u - cx - s * y) / fx
        dirs = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3).astype(np.float32)
        self._dirs = wp.array(dirs, dtype=wp.vec3, device="cpu")
        n = self.width * self.height
        self._out = dict(
            depth=wp.zeros(n, dtype=float, device="cpu"), instance=wp.zeros(n, dtype=wp.int32, device="cpu"),
            normal=wp.zeros(n, dtype=wp.vec3, device="cpu"), color=wp.zeros(n, dtype=wp.vec3, device="cpu"),
            face=wp.zeros(n, dtype=wp.int32, device="cpu"))
        self._mesh = None
        self._faces_key = None
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

    def render(self, instances: Sequence[MeshInstance]) -> RaycastResult:
        """Ray-cast ``instances`` (camera frame); instance ids are their list positions."""
        verts, faces, colors, inst, offsets = self._prepare(instances)
        key = (faces.shape, hash(faces.tobytes()))
        if self._mesh is not None and key == self._faces_key and self._mesh.points.shape[0] == len(verts):
            self._mesh.points.assign(verts)  # same topology: refit the BVH only
            self._mesh.refit()
            self.refits += 1
        else:
            points = wp.array(verts, dtype=wp.vec3, device="cpu")
            self._indices = wp.array(faces, dtype=wp.int32, device="cpu")
            self._mesh = wp.Mesh(points=points, indices=self._indices)
            self._face_instance = wp.array(inst, dtype=wp.int32, device="cpu")
            self._faces_key = key
            self.rebuilds += 1
        self._face_offset = wp.array(offsets, dtype=wp.int32, device="cpu")
        self._colors = wp.array(colors, dtype=wp.vec3, device="cpu")
        o = self._out
        wp.launch(_raycast_kernel, dim=self.width * self.height, device="cpu",
                  inputs=[self._mesh.id, self._dirs, self.max_depth, self._face_instance, self._face_offset,
                          self._indices, self._colors],
                  outputs=[o["depth"], o["instance"], o["normal"], o["color"], o["face"]])
        H, W = self.height, self.width
        return RaycastResult(
            depth=o["depth"].numpy().reshape(H, W).copy(),
            instance=o["instance"].numpy().reshape(H, W).copy(),
            normal=o["normal"].numpy().reshape(H, W, 3).copy(),
            color=o["color"].numpy().reshape(H, W, 3).copy(),
            face=o["face"].numpy().reshape(H, W).copy(),
        )
