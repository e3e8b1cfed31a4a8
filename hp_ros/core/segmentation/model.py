"""The ``model`` backend: the object model at a pose prior (e.g. the tracker's estimate), refined
against depth and rendered (:class:`ModelObjectMasker`, :class:`ModelBackend`). The fit's result and
covariance are in :mod:`.model_fit`, the signed-distance grids in :mod:`.sdf_grid` (re-exported here)."""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from hp_ros.core.segmentation.backend import LOCATED, BackendMask, BackendSetup, Frame, ObjectBackend
from hp_ros.core.segmentation.image import _check_K, _disk, _grow_mask, _ray_grid
from hp_ros.core.segmentation.model_fit import ModelFit, icp_pose_covariance
from hp_ros.core.segmentation.sdf_grid import _sdf_grid, warm_sdf_grid

__all__ = ["ModelBackend", "ModelFit", "ModelObjectMasker", "icp_pose_covariance", "warm_sdf_grid"]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of ``(N, 3)`` arrays (np.cross costs ~30 us of overhead a call)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], 1)


class ModelObjectMasker:
    """Object mask from the known object model at a pose prior (e.g. the tracker's estimate).

    Per frame (:meth:`fit`), with the search margin ``m = clip(3 prior_pos_sigma, margin,
    max_margin)``:

    1. Coarse search (``search = "auto"``: only when ``3 prior_pos_sigma`` exceeds the final gate
       ``2 tolerance``, when the previous frame's fit had a confidence below ``search_below``,
       or again in the same frame when the fit without it does; ``"always"``: every frame): the prior shifted across the view on a ``7 x 7`` grid of spacing ``m / 3``
       (camera x, y), each shift moved along its ray by the median offset between measured depth
       and the model's camera-facing surface samples; the shift whose samples agree best with
       depth (within ``2 tolerance``; samples with background far behind them count against)
       wins. Depth fixes the distance error of a prior at once; the grid the lateral one.
    2. Pose refinement: ``iterations`` robust Gauss-Newton steps of a symmetric ICP with an
       association gate shrinking geometrically from ``m`` to ``2 tolerance`` and Huber weights
       at ``tolerance / 2``: measured points (every ``1 / scale``-th pixel of the window around the
       object, off ``exclude``, seen on the surface's camera-facing side) to the surface
       (signed distance, no correspondences) and the model's camera-facing samples to the depth
       on their pixels (point-to-plane). Neighbouring objects fall out as the gate shrinks.
       The wide-gate steps use every ``wide_every``-th point / sample (they only bring the pose
       near; the final gate uses all); a step below ``converged`` (m, rad) jumps to the final
       gate, and ends the refinement there.
    3. Mask: the object rendered at the refined pose (front-face z-buffer at ``scale``,
       :func:`hp_ros.core.render.rasterize`), grown by ``dilate_px``; a pixel is object when its
       measured depth lies within ``tolerance`` of the rendered depth range around it, or when it
       has no depth but lies inside the silhouette.

    The signed distance is sampled once from :class:`hp_ros.core.sdf.MeshSDF` on a grid
    (``grid_size`` nodes along the longest side of the bounding box grown by ``max_margin``;
    cached per model) and interpolated trilinearly, so the per-frame cost does not depend on
    the mesh size (except for the final render).

    Args:
        obj: :class:`hp_ros.core.objects.ObjectModel` (metres).
        K: ``(3, 3)``; ``width``, ``height``: image size.
        margin, tolerance, max_margin: metres (see above); ``iterations``; ``scale`` in (0, 1];
        dilate_px: silhouette growth absorbing the remaining pose error (px);
        max_points: measured points kept for the refinement (evenly spaced subset);
        n_samples: model surface samples;
        device: torch + Warp device of the signed-distance grid's construction (``cpu`` or
            ``cuda:N``; the ICP itself is numpy, the silhouette z-buffer a Warp CPU kernel).
    """

    def __init__(self, obj, K, width: int, height: int, margin: float = 0.02, tolerance: float = 0.006,
                 iterations: int = 8, scale: float = 0.5, dilate_px: int = 2, max_margin: float = 0.04,
                 max_points: int = 1200, n_samples: int = 1500, grid_size: int = 56, min_points: int = 30,
                 device: str = "cpu"):
        _check_model_settings(margin, tolerance, max_margin, iterations, scale, dilate_px)
        self.K = _check_K(K)
        self.width, self.height = int(width), int(height)
        self.margin, self.tolerance, self.max_margin = float(margin), float(tolerance), float(max_margin)
        self.iterations, self.scale, self.dilate_px = int(iterations), float(scale), int(dilate_px)
        self.max_points, self.min_points = int(max_points), int(min_points)
        self.converged = (1e-4, 1e-4)   # ICP step (m, rad) below which a gate phase has converged
        self.wide_every = (3, 2)        # (measured point, model sample) strides before the final gate
        self._rx, self._ry = _ray_grid(self.K, self.width, self.height)
        self.device = str(device)
        lo, voxel, sdf, verts, faces = _sdf_grid(obj, 1.2 * self.max_margin, grid_size, self.device)
        self._grid_lo, self._voxel, self._sdf = lo, voxel, sdf
        from hp_ros.core.zbuffer import ZBuffer

        self._verts = verts
        self._zbuffer = ZBuffer(faces.cpu().numpy(), len(verts))   # the silhouette render (Warp, CPU)
        self._box = np.stack([verts.min(0), verts.max(0)])
        self.center = self._box.mean(0)
        # signed distance and its gradient per grid node (4, nodes): a trilinear lookup is then
        # one gather of the 8 corner nodes (much cheaper than 4 map_coordinates calls)
        self._field = np.stack([sdf, *np.gradient(sdf, voxel)]).reshape(4, -1).astype(np.float32)
        self._top = np.array(sdf.shape)[:, None] - 1                             # (3, 1) last node index
        self._stride = np.array([sdf.shape[1] * sdf.shape[2], sdf.shape[2], 1])  # flat node index
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # (8, 3), 4 i + 2 j + k
        self._corner_offset = corners @ self._stride                             # (8,)
        # surface samples with outward normals (the grid's gradient: consistent with its sign)
        self._samples = obj.surface_points(int(n_samples), seed=0).detach().cpu().numpy().astype(np.float64)
        self._normals = self.signed_distance(self._samples, gradient=True)[1]
        self._sample_sets = {}          # stride -> contiguous [sample, normal] rows (M, 6)
        # the ICP's residual rows: Warp kernels (icp_rows), or the numpy reference ("numpy")
        from hp_ros.core.segmentation.icp_rows import IcpRows

        self.rows_backend = "warp"
        self._icp_rows = IcpRows(self._field, sdf.shape, lo, voxel, self.K, self._samples, self._normals)
        # coarse search: "auto" (only when the prior is wide or the direct fit is poor) or "always"
        self.search = "auto"
        self.search_below = 0.9         # confidence below which a fit (this frame or the last) searches
        self.direct_iterations = 4      # ICP steps of a fit without the search (a prior within the final gate)
        self._last_confidence = 0.0     # of the previous frame's fit (0: none yet -> search)
        self.searches_after_direct = 0  # frames whose direct fit was poor and searched again

    # ------------------------------------------------------------------ pieces
    def signed_distance(self, p_obj: np.ndarray, gradient: bool = False):
        """Signed distance (m, negative inside) of object-frame points ``(N, 3)``, trilinear in the
        grid, ``+inf`` outside it; with ``gradient`` also the unit gradient ``(N, 3)`` (outward,
        central differences of the grid, interpolated; clamped to the grid outside it)."""
        c = np.ascontiguousarray(((np.asarray(p_obj, dtype=np.float64) - self._grid_lo)
                                  * (1.0 / self._voxel)).T)                               # (3, N)
        top = self._top                                                                   # (3, 1)
        inside = ((c >= 0) & (c <= top)).all(0)
        np.clip(c, 0, top, out=c)
        i0 = np.minimum(c.astype(np.int64), top - 1)
        f = c - i0
        # corner weights (8, N), corner k = 4 i + 2 j + l: prod of f (bit set) or 1 - f per axis;
        # everything is laid out (small axis, N) so the 8-corner sums run over contiguous rows
        fx, fy, fz = f
        wxy = np.stack([(1 - fx) * (1 - fy), (1 - fx) * fy, fx * (1 - fy), fx * fy])     # (4, N)
        w = np.empty((8, f.shape[1]))
        w[0::2], w[1::2] = wxy * (1 - fz), wxy * fz
        idx = self._stride @ i0 + self._corner_offset[:, None]                           # (8, N)
        # np.take is ~10x faster than fancy indexing here
        if not gradient:
            sd = (np.take(self._field[0], idx) * w).sum(0)
            return np.where(inside, sd, np.inf)
        val = (np.take(self._field, idx, axis=1) * w).sum(1)                             # (4, N)
        sd = np.where(inside, val[0], np.inf)
        g = val[1:].T
        g /= np.maximum(np.sqrt(np.einsum("ij,ij->i", g, g)), 1e-12)[:, None]
        return sd, g

    def window(self, T_cam_obj: np.ndarray, margin: float) -> Optional[tuple[int, int, int, int]]:
        """Image rectangle ``(x0, y0, x1, y1)`` (exclusive ends) holding the object's bounding box
        grown by ``margin`` at a pose; the whole image when the box reaches behind the camera,
        None when it is entirely behind it or off-image."""
        lo, hi = self._box[0] - margin, self._box[1] + margin
        box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        box = box @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
        if (box[:, 2] <= 0.02).any():
            return (0, 0, self.width, self.height) if box[:, 2].max() > 0.02 else None
        # a convex solid in front of the camera projects inside the hull of its projected corners
        K = self.K
        u = (K[0, 0] * box[:, 0] + K[0, 1] * box[:, 1]) / box[:, 2] + K[0, 2]
        v = K[1, 1] * box[:, 1] / box[:, 2] + K[1, 2]
        x0, x1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, self.width)
        y0, y1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, self.height)
        return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None

    def render(self, T_cam_obj: np.ndarray, rect: tuple, scale: float = 1.0) -> np.ndarray:
        """Depth ``(ceil(h scale), ceil(w scale))`` float32 of the object's camera-facing surface at
        a pose inside ``rect = (x0, y0, x1, y1)`` (pixel centres mapped), ``inf`` off the object."""
        x0, y0, x1, y1 = rect
        K = self.K
        p = self._verts @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
        z = p[:, 2]
        zs = np.where(z > 1e-3, z, np.nan)
        u = ((K[0, 0] * p[:, 0] + K[0, 1] * p[:, 1]) / zs + K[0, 2] - x0 + 0.5) * scale - 0.5
        v = (K[1, 1] * p[:, 1] / zs + K[1, 2] - y0 + 0.5) * scale - 0.5
        size = (max(int(np.ceil((y1 - y0) * scale)), 1), max(int(np.ceil((x1 - x0) * scale)), 1))
        # camera-facing faces only (outward winding)
        return self._zbuffer(np.stack([u, v], -1), z, size, near=1e-3, front_only=True)

    def _visible_samples(self, T: np.ndarray, depth_m: np.ndarray, exclude: Optional[np.ndarray], every: int = 1):
        """Camera-facing model samples (every ``every``-th) at pose ``T`` that project into the
        image: points ``(M, 3)`` and normals ``(M, 3)`` (camera frame), measured depth at their
        pixels ``(M,)`` (0 = none or excluded)."""
        if every not in self._sample_sets:   # rows [point, normal] (M, 6), contiguous
            self._sample_sets[every] = np.ascontiguousarray(
                np.concatenate([self._samples, self._normals], 1)[::every])
        H, W = self.height, self.width
        Rt = T[:3, :3].T
        qn = self._sample_sets[every] @ np.block([[Rt, np.zeros((3, 3))], [np.zeros((3, 3)), Rt]])
        qn[:, :3] += T[:3, 3]
        q, nq = qn[:, :3], qn[:, 3:]
        z = q[:, 2]
        ok = (np.einsum("ij,ij->i", nq, q) < 0) & (z > 0.02)
        uv = np.rint((q @ self.K[:2].T) / np.where(ok, z, 1.0)[:, None])                # (M, 2)
        ok &= (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        i = np.flatnonzero(ok)
        qn, uv = np.take(qn, i, axis=0), np.take(uv, i, axis=0)   # np.take: faster than fancy indexing
        q, nq = qn[:, :3], qn[:, 3:]
        pix = (uv[:, 1] * W + uv[:, 0]).astype(np.int64)
        dq = np.take(depth_m, pix).astype(np.float64)
        if exclude is not None:
            dq[np.take(exclude, pix)] = 0.0
        return q, nq, dq

    def _coarse_search(self, T: np.ndarray, depth_m: np.ndarray, exclude, margin: float, steps: int = 3) -> np.ndarray:
        """Step 1 of the class doc: the best of ``(2 steps + 1)^2`` shifted, depth-aligned priors."""
        q, _, _ = self._visible_samples(T, depth_m, None)
        if len(q) < self.min_points:
            return T
        K, H, W = self.K, self.height, self.width
        a = np.arange(-steps, steps + 1) * (margin / steps)
        off = np.zeros(((2 * steps + 1) ** 2, 3))                           # (G, 3): x major, then y
        off[:, 0], off[:, 1] = np.repeat(a, len(a)), np.tile(a, len(a))
        # a lateral shift keeps each sample's depth: its pixel moves by (K off) / z
        iz = 1.0 / q[:, 2]
        u = np.rint(((K[0, 0] * q[:, 0] + K[0, 1] * q[:, 1]) * iz + K[0, 2])[None]
                    + (K[0, 0] * off[:, 0] + K[0, 1] * off[:, 1])[:, None] * iz[None]).astype(np.int64)
        v = np.rint((K[1, 1] * q[:, 1] * iz + K[1, 2])[None]
                    + (K[1, 1] * off[:, 1])[:, None] * iz[None]).astype(np.int64)
        on = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        pix = np.where(on, v * W + u, 0)                                    # (G, M)
        d = np.where(on, np.take(depth_m, pix), 0.0).astype(np.float64)
        if exclude is not None:
            d[np.take(exclude, pix)] = 0.0
        r = d - q[:, 2]
        near = (d > 0) & (np.abs(r) < 2.0 * margin)
        cnt = near.sum(1)
        srt = np.sort(np.where(near, r, np.inf).astype(np.float32), axis=1)  # near offsets first
        med = np.where(cnt > 0, srt[np.arange(len(srt)), np.maximum(cnt - 1, 0) // 2], 0.0)   # (G,)
        rr = r - med[:, None]
        tol = 2.0 * self.tolerance
        score = ((d > 0) & (np.abs(rr) < tol)).sum(1) - ((d > 0) & (rr > 2.0 * tol)).sum(1)
        best = int(np.argmax(score))
        c = T[:3, :3] @ self.center + T[:3, 3] + off[best]
        out = T.copy()
        out[:3, 3] += off[best] + c / c[2] * med[best]
        return out

    def _depth_points(self, depth_m, exclude, T, margin) -> np.ndarray:
        """Measured points ``(N, 3)`` (camera frame, every ``1 / scale``-th pixel or sparser) within
        ``margin`` of the surface at pose ``T``, at most ``max_points`` (evenly spaced)."""
        rect = self.window(T, margin)
        if rect is None:
            return np.zeros((0, 3))
        x0, y0, x1, y1 = rect
        # every 1/scale-th pixel, sparser when that would give far more than max_points candidates
        step = max(int(round(1.0 / self.scale)), int(np.sqrt((x1 - x0) * (y1 - y0) / (4.0 * self.max_points))), 1)
        sl = (slice(y0, y1, step), slice(x0, x1, step))
        d = depth_m[sl]
        ok = d > 0
        if exclude is not None:
            ok &= ~exclude[sl]
        d = d[ok].astype(np.float64)
        P = np.stack([self._rx[sl][ok] * d, self._ry[sl][ok] * d, d], -1)
        if len(P) and self.rows_backend == "warp":
            P = P[self._icp_rows.near_surface(P, T, margin)]
        elif len(P):
            P = P[np.abs(self.signed_distance((P - T[:3, 3]) @ T[:3, :3])) < margin]
        if len(P) > self.max_points:
            P = P[np.linspace(0, len(P) - 1, self.max_points).astype(np.int64)]
        return P

    def _refine(self, T: np.ndarray, P: np.ndarray, depth_m, exclude, margin: float, iterations=None):
        """Step 2 of the class doc; returns the refined pose, the last step's inlier count and
        that step's system ``(J (M, 6), residuals after the step (M,), Huber weights (M,), n1)``
        at the final gate (None when no step ran there), for :func:`icp_pose_covariance`.

        A step smaller than ``converged`` (m, rad) ends the wide-gate phase at once (the gate jumps
        to its final ``2 tolerance``) and, at the final gate, the refinement."""
        huber = 0.5 * self.tolerance
        n_it, inliers = self.iterations if iterations is None else int(iterations), 0
        final_gate = 2.0 * self.tolerance
        it = 0
        system = None
        if self.rows_backend == "warp" and n_it:
            self._icp_rows.set_frame(depth_m, exclude)
            self._icp_rows.set_points(P)
        for _ in range(n_it):
            gate = margin * (final_gate / margin) ** (min(it, n_it - 1) / max(n_it - 1, 1))
            # the wide-gate steps only bring the pose near: subsets do that as well, cheaper
            wide = it < n_it - 1
            if self.rows_backend == "warp":
                J1, r1, J2, r2 = self._icp_rows.rows(T, gate, self.wide_every[0] if wide else 1,
                                                     self.wide_every[1] if wide else 1)
            else:
                J1, r1, J2, r2 = self._rows_numpy(T, P, depth_m, exclude, gate, wide)
            # both terms in one system (a term with fewer than min_points inliers is left out)
            if len(r1) < self.min_points:
                J1, r1 = J1[:0], r1[:0]
            if len(r2) < self.min_points:
                J2, r2 = J2[:0], r2[:0]
            n1, inliers = len(r1), len(r1) + len(r2)
            if not inliers:
                break
            J, r = np.concatenate([J1, J2]), np.concatenate([r1, r2])
            # Huber weights, each term averaged over its own count
            ar = np.abs(r)
            w = np.where(ar <= huber, 1.0, huber / np.maximum(ar, 1e-12))
            hub = w.copy() if not wide else None
            w[:n1] *= 1.0 / max(n1, 1)
            w[n1:] *= 1.0 / max(inliers - n1, 1)
            Jw = J * w[:, None]
            A, b = Jw.T @ J, Jw.T @ r
            A[np.diag_indices(6)] += 1e-6 * np.trace(A)
            solved, xi = cv2.solve(A, -b.reshape(6, 1), flags=cv2.DECOMP_CHOLESKY)
            if not solved:   # degenerate geometry (A singular despite the damping): least squares
                xi = cv2.solve(A, -b.reshape(6, 1), flags=cv2.DECOMP_SVD)[1]
            xi = xi[:, 0]
            dT = np.eye(4)
            dT[:3, :3] = cv2.Rodrigues(xi[3:].reshape(3, 1))[0]
            dT[:3, 3] = xi[:3]
            T = dT @ T
            if hub is not None:    # final gate: the linearised residuals after this step
                system = (J, r + J @ xi, hub, n1, T[:3, 3])
            if np.abs(xi[:3]).max() < self.converged[0] and np.abs(xi[3:]).max() < self.converged[1]:
                if it >= n_it - 1:
                    break
                it = n_it - 1      # converged under a wide gate: go on at the final one
            else:
                it += 1
        return T, inliers, system

    def _rows_numpy(self, T: np.ndarray, P: np.ndarray, depth_m, exclude, gate: float, wide: bool):
        """The ICP's kept residual rows at pose ``T`` in numpy: ``(J1 (n1, 6), r1, J2 (n2, 6), r2)``
        of the measured points (every ``wide_every[0]``-th when ``wide``) and of the model samples
        (every ``wide_every[1]``-th); the reference of :class:`~hp_ros.core.segmentation.icp_rows.IcpRows`."""
        Pi = P[::self.wide_every[0]] if wide else P
        R, t = T[:3, :3], T[:3, 3]
        # measured points to the surface (signed distance), on its camera-facing side
        s, g = self.signed_distance((Pi - t) @ R, gradient=True)
        n = g @ R.T                                                      # outward normals
        i1 = np.flatnonzero((np.abs(s) < gate) & (np.einsum("ij,ij->i", n, Pi) < 0))
        # model samples to the depth on their pixels (point-to-plane along the ray)
        q, nq, dq = self._visible_samples(T, depth_m, exclude, self.wide_every[1] if wide else 1)
        i2 = np.flatnonzero((dq > 0) & (np.abs(dq - q[:, 2]) < gate))
        m1, X1 = -np.take(n, i1, axis=0), np.take(Pi, i1, axis=0)
        m2, X2 = np.take(nq, i2, axis=0), np.take(q, i2, axis=0)
        r2 = np.einsum("ij,ij->i", X2, m2) * (1.0 - np.take(dq, i2) / X2[:, 2])
        return (np.concatenate([m1, _cross(X1, m1)], 1), np.take(s, i1),
                np.concatenate([m2, _cross(X2, m2)], 1), r2)

    # ------------------------------------------------------------------ one frame
    def fit(self, depth_m: np.ndarray, T_cam_obj_prior: np.ndarray, prior_pos_sigma: float = 0.0,
            exclude: Optional[np.ndarray] = None) -> Optional[ModelFit]:
        """Refine the prior against ``depth_m`` ``(H, W)`` (metres, 0 = invalid) and build the mask.

        ``exclude``: ``(H, W)`` bool pixels that are not object (the hand), left out of the fit
        and the mask. Returns None when the object at the prior is off-image."""
        T = np.asarray(T_cam_obj_prior, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError(f"T_cam_obj_prior must be a finite (4, 4) pose, got shape {T.shape}")
        if not prior_pos_sigma >= 0:
            raise ValueError(f"prior_pos_sigma must be >= 0 m, got {prior_pos_sigma}")
        if depth_m.shape != (self.height, self.width):
            raise ValueError(f"depth is {depth_m.shape}, the camera is {(self.height, self.width)}")
        margin = min(max(self.margin, 3.0 * float(prior_pos_sigma)), self.max_margin)
        if self.window(T, margin) is None:
            return None
        # a prior known to within the final gate, after a confident fit, is refined directly (the
        # tracker's pose, one frame old); the coarse search runs when that fit disagrees with depth
        # (or before: a wide prior, a poor previous frame)
        direct = self.search == "auto" and 3.0 * float(prior_pos_sigma) <= 2.0 * self.tolerance \
            and self._last_confidence >= self.search_below
        fit = self._fit_at(T, depth_m, exclude, margin, search=not direct)  # direct: direct_iterations ICP steps
        if direct and (fit is None or fit.confidence < self.search_below):
            self.searches_after_direct += 1
            second = self._fit_at(T, depth_m, exclude, margin, search=True)
            if second is not None and (fit is None or second.confidence > fit.confidence):
                fit = second
        self._last_confidence = 0.0 if fit is None else fit.confidence
        return fit

    def _fit_at(self, T: np.ndarray, depth_m: np.ndarray, exclude, margin: float, search: bool) -> Optional[ModelFit]:
        """Steps 1 (when ``search``), 2 and 3 of the class doc from the prior ``T``."""
        if search:
            T = self._coarse_search(T, depth_m, exclude, margin)
        T, inliers, system = self._refine(T, self._depth_points(depth_m, exclude, T, margin), depth_m, exclude,
                                          margin, self.iterations if search else min(self.iterations,
                                                                                     self.direct_iterations))
        cov, res_sigma = (None, np.full(2, np.nan)) if system is None else icp_pose_covariance(*system)
        # 3. mask at the refined pose
        rect = self.window(T, 0.0)
        if rect is None:
            return None
        pad = self.dilate_px + 1
        x0, y0, x1, y1 = rect = (max(rect[0] - pad, 0), max(rect[1] - pad, 0), min(rect[2] + pad, self.width),
                                 min(rect[3] + pad, self.height))
        zb = cv2.resize(self.render(T, rect, self.scale), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        sil = np.isfinite(zb)
        dm = depth_m[y0:y1, x0:x1]
        valid = dm > 0
        if self.dilate_px > 0:  # the ring takes the nearest / farthest rendered depth around it
            k = _disk(self.dilate_px)
            zlo = cv2.erode(zb, k, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
            zhi = cv2.dilate(np.where(sil, zb, 0).astype(np.float32), k)
        else:
            zlo, zhi = zb, np.where(sil, zb, 0)
        agree = valid & (dm >= zlo - self.tolerance) & (dm <= zhi + self.tolerance)
        mask = agree | (sil & ~valid)
        if exclude is not None:
            mask &= ~exclude[y0:y1, x0:x1]
        n_sil, n_valid = np.count_nonzero(sil), np.count_nonzero(sil & valid)
        conf = np.count_nonzero(sil & agree) / n_valid * min(1.0, 2.0 * n_valid / n_sil) if n_valid else 0.0
        return ModelFit(mask, rect, T, float(conf), inliers, cov, res_sigma)


def _check_model_settings(margin, tolerance, max_margin, iterations, scale, dilate_px) -> None:
    """ValueError for settings of the model backend that cannot work."""
    if not (0 < tolerance < margin <= max_margin):
        raise ValueError(f"model backend needs 0 < model_tolerance < model_margin <= model_max_margin (m), got "
                         f"{tolerance}, {margin}, {max_margin}")
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"model_icp_iterations must be an integer >= 0, got {iterations}")
    if not 0 < scale <= 1:
        raise ValueError(f"model_scale must be in (0, 1], got {scale}")
    if int(dilate_px) != dilate_px or dilate_px < 0:
        raise ValueError(f"model_dilate_px must be an integer >= 0, got {dilate_px}")


class ModelBackend(ObjectBackend):
    """``model``: the object model at the frame's pose prior, refined against depth
    (:class:`ModelObjectMasker`). Nothing without a prior or without depth.

    :meth:`locate` runs the fit (the visible hand, grown by ``hand_margin_px``, left out) and
    returns the fit's rectangle, which joins the working rectangle; :meth:`object_mask` places
    the fit's mask in it, and hands out the refined pose with its confidence and covariance
    (:attr:`ModelFit.covariance`) as the answer's ``pose`` fields (the frame's observation).
    """

    name = "model"
    region = LOCATED

    def __init__(self, setup: BackendSetup):
        cfg = setup.config
        if setup.object_model is None:
            raise ValueError("object backend 'model' needs the object model (object_model=...)")
        self.masker = ModelObjectMasker(
            setup.object_model, setup.K, setup.width, setup.height, margin=cfg.model_margin,
            tolerance=cfg.model_tolerance, iterations=int(cfg.model_icp_iterations), scale=cfg.model_scale,
            dilate_px=int(cfg.model_dilate_px), max_margin=cfg.model_max_margin, device=cfg.model_device)
        self.hand_margin_px = cfg.hand_margin_px
        self._fit: Optional[ModelFit] = None   # this frame's fit, from locate() to object_mask()

    def locate(self, frame: Frame) -> Optional[tuple]:
        self._fit = None
        if frame.T_cam_obj_prior is None or frame.depth_m is None:
            return None
        exclude = _grow_mask(frame.hand_mask, frame.hand_roi, self.hand_margin_px)
        self._fit = self.masker.fit(frame.depth_m, frame.T_cam_obj_prior, frame.prior_pos_sigma or 0.0,
                                    exclude if exclude.any() else None)
        return None if self._fit is None else self._fit.rect

    def object_mask(self, frame: Frame) -> BackendMask:
        fit = self._fit
        if fit is None:
            return BackendMask()
        mask = None
        if not frame.empty:
            x0, y0, x1, y1 = frame.rect
            mx0, my0, mx1, my1 = fit.rect
            mask = np.zeros((y1 - y0, x1 - x0), bool)
            mask[my0 - y0:my1 - y0, mx0 - x0:mx1 - x0] = fit.mask
        return BackendMask(mask, fit.confidence, pose=fit.T_cam_obj, pose_covariance=fit.covariance,
                           pose_confidence=fit.confidence)
