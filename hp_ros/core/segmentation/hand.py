"""Hand mask from the robot's own model (ROS-free).

:class:`HandAligner` corrects the published camera->hand transform against depth
(point-to-plane ICP of the hand's camera-facing surface samples and marker spheres, kept
across frames); :class:`HandMasker` fills the convex hull of each convex mesh part (exact
silhouette, ~36 ``cv2.fillConvexPoly`` calls) and z-buffers the front faces with
:class:`hp_ros.core.zbuffer.ZBuffer` (one Warp kernel) at ``hand_depth_scale``; :func:`visible_hand_mask`
drops pixels whose depth is ``hand_depth_tolerance`` behind the hand (background) or
``hand_occluder_tolerance`` in front of it (the held object).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from hp_ros.core.segmentation.image import _check_K, _disk


# pixels without depth count as hand only this far (px) inside the silhouette and away from an occluder
HOLE_RIM_PX, HOLE_OCCLUDER_PX = 1, 2


@dataclass
class HandRender:
    """Rendered hand for one frame.

    silhouette: ``(H, W)`` bool, the projected hand mesh (no dilation, no occlusion).
    zbuf: ``(H, W)`` float32 depth of the nearest hand surface (perspective-correct, rasterised
        at ``depth_scale`` of the resolution), ``inf`` off the hand.
    fingertips_uv: ``(4, 2)`` projected fingertip link origins (thumb, index, middle, ring).
    fingertips_z: ``(4,)`` their depths (m).
    roi: ``(x0, y0, x1, y1)`` image rectangle (exclusive ends) holding the whole silhouette plus
        a margin; everything outside it is off the hand.
    """

    silhouette: np.ndarray
    zbuf: np.ndarray
    fingertips_uv: np.ndarray
    fingertips_z: np.ndarray
    roi: tuple = (0, 0, 0, 0)


def _convex_parts(faces: np.ndarray, verts: np.ndarray, eps: float = 1e-6) -> tuple[list, np.ndarray]:
    """Split a triangle mesh into connected components; returns (vertex index arrays of the
    convex components, faces of the others ``(F', 3)``). A component is convex when all its
    vertices lie on one side of every face plane."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nv = verts.shape[0]
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    n, lab = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(nv, nv)), directed=False)
    convex, rest = [], []
    for c in range(n):
        fsel = faces[lab[faces[:, 0]] == c]
        if len(fsel) == 0:
            continue
        vids = np.unique(fsel)
        a, b, cc = verts[fsel[:, 0]], verts[fsel[:, 1]], verts[fsel[:, 2]]
        nrm = np.cross(b - a, cc - a)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        side = np.einsum("fk,fvk->fv", nrm, verts[vids][None] - a[:, None])   # (F, V) signed distances
        one_side = (side <= eps).all(1) | (side >= -eps).all(1)
        (convex.append(vids) if one_side.all() else rest.append(fsel))
    return convex, (np.concatenate(rest) if rest else np.zeros((0, 3), np.int64))


class HandMasker:
    """Hard hand silhouette at full image resolution from joint angles and ``T_cam_hand``.

    The silhouette is exact and cheap for the convex parts of the hand mesh (boxes, cylinders,
    spheres of the primitive URDF; the projection of a convex solid is the convex hull of its
    projected vertices): one ``cv2.fillConvexPoly`` per part. Non-convex parts (user meshes) are
    filled face by face. The per-pixel hand depth comes from :class:`hp_ros.core.zbuffer.ZBuffer`
    (z-buffer, front faces) at ``depth_scale`` of the resolution inside the hand's bounding box,
    upsampled: it is compared with sensor depth at centimetre tolerance only.

    Args:
        hand: :class:`hp_ros.core.hand.HandModel`.
        K: ``(3, 3)`` intrinsics; ``width``, ``height``: image size.
        marker_radius: radius (m) of fingertip marker spheres drawn as part of the hand (0 = none).
        depth_scale: resolution factor of the hand depth raster (1 = full).
    """

    def __init__(self, hand, K, width: int, height: int, near: float = 0.01, marker_radius: float = 0.0,
                 depth_scale: float = 1.0, margin_px: int = 8):
        import torch

        self.hand = hand
        self.K = _check_K(K)
        self.width, self.height = int(width), int(height)
        self.near = float(near)
        self.marker_radius = float(marker_radius)
        self.depth_scale = float(depth_scale)
        self.margin = int(margin_px)
        self._faces_t = hand.mesh_faces.detach().cpu().long()
        faces = self._faces_t.numpy()
        # float64 numpy forward kinematics (the filter's): ~10x less than torch's per-op overhead for
        # one configuration; the torch path stays for hand models without the closed-form factors
        from hp_ros.core.ekf.kinematics import HandKinematics

        kin = HandKinematics(hand)
        self._kin = kin if kin.fk_factors is not None and "mesh_verts" in getattr(hand, "_np", {}) else None
        if self._kin is not None:
            self._mesh_local = np.asarray(hand._np["mesh_verts"], dtype=np.float64)
            self._mesh_links = hand.mesh_vert_link_ids.detach().cpu().numpy()
        self._parts, self._loose_faces = _convex_parts(faces, hand._np["mesh_verts"] if hasattr(hand, "_np")
                                                       else hand.posed_mesh(hand.zero_q())[0][0].detach().numpy())
        # the parts' vertex ids end to end, and where each part starts (one reduceat per frame)
        self._part_vids = np.concatenate(self._parts).astype(np.int64) if self._parts else np.zeros(0, np.int64)
        self._part_starts = np.cumsum([0] + [len(p) for p in self._parts[:-1]]).astype(np.int64)
        self._torch = torch
        self._zbuffer = None   # ZBuffer of the face table, made at the first render (vertex count)

    def posed(self, q, T_cam_hand):
        """Posed mesh vertices ``(V, 3)`` and fingertips ``(4, 3)`` (float64, camera frame)."""
        if self._kin is not None:
            links = np.asarray(T_cam_hand, dtype=np.float64).reshape(4, 4) @ self._kin.forward_kinematics(
                self._kin.as_q(q))
            return self._kin._posed(links, self._mesh_local, self._mesh_links), links[self._kin.tip_idx, :3, 3]
        torch = self._torch
        q_t = torch.as_tensor(np.asarray(q, dtype=np.float64).reshape(1, -1), dtype=self.hand.dtype)
        T = torch.as_tensor(np.asarray(T_cam_hand, dtype=np.float64).reshape(1, 4, 4), dtype=self.hand.dtype)
        if q_t.shape[1] != self.hand.num_joints:
            raise ValueError(f"q must have {self.hand.num_joints} joint values, got {q_t.shape[1]}")
        with torch.no_grad():
            link_poses = self.hand.forward_kinematics(q_t, T)
            verts = self.hand.posed_mesh(q_t, T, link_poses=link_poses)[0][0].numpy().astype(np.float64)
            tips = self.hand.fingertips(q_t, T, link_poses=link_poses)[0].numpy().astype(np.float64)
        return verts, tips

    def _project(self, p):
        z = p[..., 2]
        zs = np.where(z > self.near, z, np.nan)
        u = self.K[0, 0] * p[..., 0] / zs + self.K[0, 1] * p[..., 1] / zs + self.K[0, 2]
        v = self.K[1, 1] * p[..., 1] / zs + self.K[1, 2]
        return u, v, z

    def render(self, q, T_cam_hand) -> HandRender:
        """``q`` ``(J,)`` joint angles (model order), ``T_cam_hand`` ``(4, 4)`` -> :class:`HandRender`."""
        H, W = self.height, self.width
        verts, tips = self.posed(q, T_cam_hand)
        u, v, z = self._project(verts)
        tu, tv, tz = self._project(tips)
        tuv = np.stack([tu, tv], -1)
        sil = np.zeros((H, W), np.uint8)
        zbuf = np.full((H, W), np.inf, np.float32)
        front = z > self.near
        if not front.any():
            return HandRender(sil > 0, zbuf, tuv, tz, (0, 0, 0, 0))
        m = self.margin
        x0 = int(max(np.floor(np.nanmin(u[front])) - m, 0)); x1 = int(min(np.ceil(np.nanmax(u[front])) + m + 1, W))
        y0 = int(max(np.floor(np.nanmin(v[front])) - m, 0)); y1 = int(min(np.ceil(np.nanmax(v[front])) + m + 1, H))
        if x0 >= x1 or y0 >= y1:
            return HandRender(sil > 0, zbuf, tuv, tz, (0, 0, 0, 0))
        roi = (x0, y0, x1, y1)
        crop = sil[y0:y1, x0:x1]
        if self._zbuffer is None or self._zbuffer.n_vertices != len(z):
            from hp_ros.core.zbuffer import ZBuffer

            self._zbuffer = ZBuffer(self._faces_t.numpy(), len(z))
        zc = self._silhouette_and_depth(u, v, z, roi, crop)
        zbuf[y0:y1, x0:x1] = zc
        if self.marker_radius > 0:  # fingertip marker spheres are part of the hand
            r_m = self.marker_radius
            for (mu, mv), mz in zip(tuv, tz):
                if np.isfinite(mu) and mz > r_m + self.near:
                    r = self.K[0, 0] * r_m / np.sqrt(mz * mz - r_m ** 2)
                    cx, cy, rr = int(np.floor(mu - r - 1)), int(np.floor(mv - r - 1)), int(np.ceil(2 * r + 3))
                    bx0, by0 = max(cx, x0), max(cy, y0)
                    bx1, by1 = min(cx + rr, x1), min(cy + rr, y1)
                    if bx0 >= bx1 or by0 >= by1:
                        continue
                    disc = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
                    cv2.circle(disc, (int(round((mu - bx0) * 16)), int(round((mv - by0) * 16))), int(round(r * 16)), 1, -1,
                               lineType=cv2.LINE_8, shift=4)
                    on = disc > 0
                    zb = zbuf[by0:by1, bx0:bx1]
                    zb[on] = np.minimum(zb[on], mz - r_m)
                    sil[by0:by1, bx0:bx1] |= disc
        return HandRender(sil > 0, zbuf, tuv, tz, roi)

    def _silhouette_and_depth(self, u, v, z, roi: tuple, crop: np.ndarray) -> np.ndarray:
        """The exact silhouette into ``crop`` (convex hulls of the convex parts, loose faces one by
        one, 4 fractional bits) and the front faces' z-buffer at ``depth_scale`` upsampled to it
        (``(y1 - y0, x1 - x0)`` float32, ``inf`` off the silhouette). A full-resolution z-buffer as
        the silhouette instead measured no cheaper and matched the true hand mask less well."""
        x0, y0, x1, y1 = roi
        front = z > self.near
        # 4 fractional bits, rounded once for all vertices (behind the near plane: 0, never drawn)
        uv16 = np.round(np.where(front[:, None], np.stack([u - x0, v - y0], -1) * 16.0, 0.0)).astype(np.int32)
        if self._parts:
            whole = np.logical_and.reduceat(front[self._part_vids], self._part_starts)  # part entirely in front
            for vids, ok in zip(self._parts, whole):
                if ok:
                    cv2.fillConvexPoly(crop, cv2.convexHull(uv16[vids]), 1, lineType=cv2.LINE_8, shift=4)
        for f in self._loose_faces:
            if front[f].all():
                cv2.fillConvexPoly(crop, uv16[f], 1, lineType=cv2.LINE_8, shift=4)
        # pixel centres mapped to the low-resolution raster
        s = self.depth_scale
        hw, hh = max(int(np.ceil((x1 - x0) * s)), 1), max(int(np.ceil((y1 - y0) * s)), 1)
        uvs = np.stack([(u - x0 + 0.5) * s - 0.5, (v - y0 + 0.5) * s - 0.5], -1)
        zlow = self._zbuffer(uvs, z, (hh, hw), near=self.near, front_only=True)  # closed parts: front faces
        zc = cv2.resize(zlow, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        # silhouette rim pixels the low-resolution raster missed take the nearest depth around
        k = np.ones((3, 3), np.uint8)
        for _ in range(3):
            hole = (crop > 0) & ~np.isfinite(zc)
            if not hole.any():
                break
            zc = np.where(hole, cv2.erode(zc, k, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf), zc)
        zc[crop == 0] = np.inf
        return zc


class HandAligner:
    """Corrects the camera->hand transform against the depth image (calibration error).

    Keeps a 6-DoF correction ``C`` (camera frame, ``T_cam_hand_est = C @ T_cam_hand``) across
    frames. Each frame runs ``iterations`` robust Gauss-Newton steps of point-to-plane ICP with
    projective association: the hand's camera-facing surface samples are projected, the sensor
    point on the same ray (``p * d / z``) is their match, pairs farther apart than ``gate`` (m) are
    dropped (background at the silhouette, the held object in front of the fingers), Huber
    weights at ``huber``. The correction is clamped to ``max_translation`` / ``max_rotation`` (a
    calibration error, not a new pose), and damped towards the previous frame's value.
    """

    def __init__(self, hand, K, width: int, height: int, iterations: int = 3, gate: float = 0.015,
                 huber: float = 0.003, max_translation: float = 0.02, max_rotation: float = 0.1,
                 damping: float = 1e-4, min_points: int = 50, marker_radius: float = 0.0,
                 visibility_tolerance: float = 0.004, stride: int = 2, first_iterations: int = 8,
                 every: int = 1):
        self.visibility_tolerance = float(visibility_tolerance)
        self.every = max(int(every), 1)
        # per-frame change of the correction counted as settled: no hand surface sample moved by more
        # (m). The ICP's own frame-to-frame jitter at the hand is ~0.4 mm / 4.5 mrad (p50) on the
        # synthetic sequences: measured at the camera origin the same steps looked like 2 mm
        self.settled = 1.5e-3
        self._settled = False
        self.stride, self.first_iterations = max(int(stride), 1), int(first_iterations)
        self._frames = 0
        self.hand, self.K = hand, _check_K(K)
        self.width, self.height = int(width), int(height)
        self.iterations, self.gate, self.huber = int(iterations), float(gate), float(huber)
        self.max_translation, self.max_rotation = float(max_translation), float(max_rotation)
        self.damping, self.min_points = float(damping), int(min_points)
        self.correction = np.eye(4)
        self.inlier_ratio = 0.0
        self.marker_radius = float(marker_radius)
        # unit sphere samples (Fibonacci) for the fingertip marker spheres
        i = np.arange(48) + 0.5
        phi, th = np.arccos(1 - 2 * i / 48), np.pi * (1 + 5 ** 0.5) * i
        self._sphere = np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], -1)
        # float64 numpy forward kinematics (as HandMasker.posed) and every stride-th surface sample
        from hp_ros.core.ekf.kinematics import HandKinematics

        kin = HandKinematics(hand) if hand is not None else None
        self._kin = kin if kin is not None and kin.fk_factors is not None else None
        if self._kin is not None:
            sl = slice(None, None, self.stride)
            self._pts_local = kin.surf_pts[sl]
            self._normals_local = hand._point_normals.detach().cpu().double().numpy()[sl]
            self._pts_links = kin.surf_links[sl]

    def reset(self) -> None:
        self.correction = np.eye(4)
        self._frames = 0
        self._settled = False

    def _surface(self, q, T_cam_hand):
        if self._kin is not None:
            links = np.asarray(T_cam_hand, dtype=np.float64).reshape(4, 4) @ self._kin.forward_kinematics(
                self._kin.as_q(q))
            R = links[self._pts_links, :3, :3]
            p = np.einsum("kij,kj->ki", R, self._pts_local) + links[self._pts_links, :3, 3]
            n = np.einsum("kij,kj->ki", R, self._normals_local)
            return self._with_markers(p, n, links[self._kin.tip_idx, :3, 3])
        import torch
        q_t = torch.as_tensor(np.asarray(q, dtype=np.float64).reshape(1, -1), dtype=self.hand.dtype)
        T = torch.as_tensor(np.asarray(T_cam_hand, dtype=np.float64).reshape(1, 4, 4), dtype=self.hand.dtype)
        with torch.no_grad():
            lp = self.hand.forward_kinematics(q_t, T)
            p, n = self.hand.surface_points(q_t, T, link_poses=lp, return_normals=True)
            tips = self.hand.fingertips(q_t, T, link_poses=lp)
        p, n = p[0, ::self.stride].numpy().astype(np.float64), n[0, ::self.stride].numpy().astype(np.float64)
        return self._with_markers(p, n, tips[0].numpy().astype(np.float64))

    def _with_markers(self, p, n, tips):
        """Surface samples ``(N, 3)`` and normals with the fingertip marker spheres (centred on
        ``tips`` ``(4, 3)``) in place of the fingertip geometry they hide."""
        if self.marker_radius > 0:  # marker spheres hide the fingertip geometry: use theirs
            inside = (np.linalg.norm(p[:, None] - tips[None], axis=2) < self.marker_radius).any(1)
            sp = (tips[:, None] + self.marker_radius * self._sphere[None]).reshape(-1, 3)
            sn = np.tile(self._sphere, (4, 1))
            p, n = np.concatenate([p[~inside], sp]), np.concatenate([n[~inside], sn])
        return p, n

    def update(self, q, T_cam_hand, depth_m: np.ndarray, render: Optional[HandRender] = None) -> np.ndarray:
        """One frame: refine the correction; returns the corrected ``T_cam_hand`` ``(4, 4)``.

        ``render``: the hand rendered at the current estimate (``correction @ T_cam_hand``); its
        z-buffer drops samples hidden by other parts of the hand (self-occlusion).

        With ``every`` > 1, once the correction has settled (the last frame moved no hand surface
        sample by more than ``settled`` m), the steps run on every ``every``-th frame only: a calibration error
        drifts slowly, the held correction serves the frames between."""
        if self.every > 1 and self._settled and self._frames % self.every:
            self._frames += 1
            return self.correction @ np.asarray(T_cam_hand, dtype=np.float64)
        p0, n0 = self._surface(q, T_cam_hand)
        K, H, W = self.K, self.height, self.width
        C = self.correction.copy()
        vis = None
        iterations = self.first_iterations if self._frames == 0 else self.iterations
        self._frames += 1
        for it in range(iterations):
            p = p0 @ C[:3, :3].T + C[:3, 3]
            n = n0 @ C[:3, :3].T
            z = p[:, 2]
            ok = (z > 0.05) & ((n * p).sum(1) < 0)
            zs = np.where(ok, z, 1.0)
            u = np.round(K[0, 0] * p[:, 0] / zs + K[0, 1] * p[:, 1] / zs + K[0, 2]).astype(np.int64)
            v = np.round(K[1, 1] * p[:, 1] / zs + K[1, 2]).astype(np.int64)
            ok &= (u >= 0) & (u < W) & (v >= 0) & (v < H)
            if vis is None and render is not None:  # self-occlusion test once, at the start pose
                vis = np.zeros_like(ok)
                vis[ok] = z[ok] <= render.zbuf[v[ok], u[ok]] + self.visibility_tolerance
            if vis is not None:
                ok &= vis
            idx = np.nonzero(ok)[0]
            d = depth_m[v[idx], u[idx]].astype(np.float64)
            gate = self.gate if it else self.gate * 1.5
            keep = (d > 0) & (np.abs(d - z[idx]) < gate)
            idx, d = idx[keep], d[keep]
            self.inlier_ratio = idx.size / max(np.count_nonzero(ok), 1)
            if idx.size < self.min_points:
                break
            pi, ni = p[idx], n[idx]
            m = pi * (d / pi[:, 2])[:, None]
            r = ((pi - m) * ni).sum(1)
            J = np.concatenate([ni, np.cross(pi, ni)], 1)           # d r / d (v, w), left perturbation
            w = np.where(np.abs(r) <= self.huber, 1.0, self.huber / np.maximum(np.abs(r), 1e-12))
            A = (J * w[:, None]).T @ J + self.damping * idx.size * np.eye(6)
            b = (J * w[:, None]).T @ r
            xi = -np.linalg.solve(A, b)
            dT = np.eye(4)
            dT[:3, :3] = cv2.Rodrigues(xi[3:].reshape(3, 1))[0]
            dT[:3, 3] = xi[:3]
            C = dT @ C
            if np.linalg.norm(xi[:3]) < 1e-5 and np.linalg.norm(xi[3:]) < 1e-5:
                break
        # a calibration correction stays small: reject a runaway estimate
        ang = np.linalg.norm(cv2.Rodrigues(C[:3, :3])[0])
        if np.linalg.norm(C[:3, 3]) <= self.max_translation and ang <= self.max_rotation:
            step = C @ np.linalg.inv(self.correction)
            p = p0 @ self.correction[:3, :3].T + self.correction[:3, 3]   # samples before this frame's step
            moved = p @ (step[:3, :3] - np.eye(3)).T + step[:3, 3]
            self._settled = bool(len(p)) and float(np.sqrt(np.einsum("ij,ij->i", moved, moved).max())) < self.settled
            self.correction = C
        else:
            self._settled = False
        return self.correction @ np.asarray(T_cam_hand, dtype=np.float64)


def visible_hand_mask(render: HandRender, dilate_px: int = 0, depth_m: Optional[np.ndarray] = None,
                      depth_tolerance: float = 0.02, occluder: Optional[np.ndarray] = None,
                      occluder_tolerance: float = 0.006) -> tuple[np.ndarray, float]:
    """Hand mask that absorbs small calibration error and removes what is not the hand.

    The silhouette and its z-buffer are grown by ``dilate_px`` (the z-buffer by a min filter, so
    the ring takes the nearest hand depth around it). With ``depth_m``, pixels with valid
    measured depth more than ``depth_tolerance`` behind the hand (background seen through the
    silhouette) or more than ``occluder_tolerance`` in front of it (the held object) are dropped;
    pixels without depth are kept unless next to such an occluder.
    ``occluder`` (e.g. the colour object mask) is removed too. Returns ``(mask, confidence)``:
    the confidence is the share of silhouette pixels with valid depth that agree with it (1.0
    without depth). Work is done inside ``render.roi`` only.
    """
    H, W = render.silhouette.shape
    out = np.zeros((H, W), bool)
    x0, y0, x1, y1 = render.roi
    if x0 >= x1 or y0 >= y1:
        return out, 0.0
    sil = render.silhouette[y0:y1, x0:x1]
    zb = render.zbuf[y0:y1, x0:x1]
    if dilate_px > 0:
        k = _disk(dilate_px)
        mask = cv2.dilate(sil.view(np.uint8), k).astype(bool)
        zlo = cv2.erode(zb, k, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
        zhi = cv2.dilate(np.where(sil, zb, 0).astype(np.float32), k)
    else:
        mask, zlo, zhi = sil.copy(), zb, zb
    conf = 1.0
    if depth_m is not None:
        d = depth_m[y0:y1, x0:x1]
        valid = d > 0
        agree = (d >= zlo - occluder_tolerance) & (d <= zhi + depth_tolerance)
        n_sil = np.count_nonzero(sil & valid)
        if n_sil:
            conf = float(np.count_nonzero(sil & valid & agree) / n_sil)
        # pixels without depth next to an occluder inside the silhouette (its edge holes) are
        # not hand; other holes are
        occ = (sil & valid & (d < zlo - occluder_tolerance)).view(np.uint8)
        near_occ = cv2.dilate(occ, _disk(HOLE_OCCLUDER_PX)).astype(bool)
        inner = cv2.erode(sil.view(np.uint8), _disk(HOLE_RIM_PX)).astype(bool) if HOLE_RIM_PX else sil
        mask &= agree | (~valid & ~near_occ & inner)
    if occluder is not None:
        mask &= ~occluder[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = mask
    return out, conf
