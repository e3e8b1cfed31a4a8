"""Segmentation backends (ROS-free): hand mask from the robot's own model, object mask from a
colour model, from depth, from an external mask, from detectron2 or from the object model at a
pose prior, clean-up, confidences, object observations and coloured-fingertip-marker detection.

Conventions (docs/ARCHITECTURE.md): images ``H x W``, pixel centres at integer coordinates;
camera frame REP-103 optical; masks are ``(H, W)`` bool; colour images are ``(H, W, 3)`` uint8
**RGB**; depth is ``(H, W)`` float32 metres with 0 (or NaN) = invalid (:func:`depth_to_metres`
converts 16UC1 millimetres / 32FC1 metres).

Pipeline of :class:`Segmenter.segment` for one frame:

1. Hand: :class:`HandAligner` corrects the published camera->hand transform against depth
   (point-to-plane ICP of the hand's camera-facing surface samples and marker spheres, kept
   across frames); :class:`HandMasker` fills the convex hull of each convex mesh part (exact
   silhouette, ~36 ``cv2.fillConvexPoly`` calls) and z-buffers the front faces with
   :func:`hp_ros.core.render.rasterize` at ``hand_depth_scale``; :func:`visible_hand_mask`
   drops pixels whose depth is ``hand_depth_tolerance`` behind the hand (background) or
   ``hand_occluder_tolerance`` in front of it (the held object).
2. Object: raw masks from the configured backends (``color``: HSV ranges, an H-S histogram
   back-projection learned from a first confident mask, or one learned from the known object
   model's texture/colours, :meth:`HistogramColorModel.from_object_model`; ``depth``: points inside a workspace box
   in the camera or hand-base frame; ``external``; ``detectron2``; ``model``: the object model at
   a pose prior such as the tracker's estimate, refined against depth and rendered,
   :class:`ModelObjectMasker`), minus the visible hand, combined
   (``a+b`` intersection, ``a|b`` union: colour pixels whose valid depth is outside the workspace
   are dropped, so colour only fills depth holes), then cleaned (:func:`clean_mask`; with
   ``object_size`` the component whose 3D extent, :func:`extent_3d`, fits the object model's
   size wins and implausible ones are rejected). All object work happens inside the workspace
   box's image rectangle (joined with the model backend's window around the prior).
3. Observation: centroid, bounding box, area, median depth and back-projected centre
   (:func:`object_observation`); fingertip markers (:class:`FingertipMarkerDetector`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = [
    "to_rgb", "depth_to_metres", "object_surface_colors", "HandRender", "HandMasker", "visible_hand_mask", "HandAligner", "HSVColorModel", "HistogramColorModel",
    "DepthBoxForeground", "Detectron2Backend", "ModelObjectMasker", "ModelFit", "icp_pose_covariance", "clean_mask", "extent_3d", "CleanResult", "ObjectObservation",
    "object_observation", "FingertipMarkerDetector", "FingertipResult", "SegmenterConfig",
    "SegmentationResult", "Segmenter", "overlay", "parse_combination", "OBJECT_BACKENDS",
]

OBJECT_BACKENDS = ("color", "depth", "external", "detectron2", "model")
# pixels without depth count as hand only this far (px) inside the silhouette and away from an occluder
HOLE_RIM_PX, HOLE_OCCLUDER_PX = 1, 2
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")


# ----------------------------------------------------------------------------- image conversion

def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """Colour image of a supported encoding -> ``(H, W, 3)`` uint8 RGB (a view when possible)."""
    if encoding not in COLOR_ENCODINGS:
        raise ValueError(f"unsupported colour encoding {encoding!r}; supported: {list(COLOR_ENCODINGS)}")
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"colour image must be uint8, got {img.dtype}")
    if encoding == "mono8":
        if img.ndim != 2:
            raise ValueError(f"mono8 image must be (H, W), got {img.shape}")
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = 4 if encoding in ("rgba8", "bgra8") else 3
    if img.ndim != 3 or img.shape[2] != channels:
        raise ValueError(f"{encoding} image must be (H, W, {channels}), got {img.shape}")
    if encoding == "rgb8":
        return img
    code = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB}[encoding]
    return cv2.cvtColor(img, code)


def depth_to_metres(depth: np.ndarray, encoding: str, depth_scale: float = 0.001) -> np.ndarray:
    """Depth image -> ``(H, W)`` float32 metres, 0 where invalid (0, NaN, inf, negative).

    ``16UC1`` values are multiplied by ``depth_scale`` (RealSense: millimetres, 0.001);
    ``32FC1`` is already in metres.
    """
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {d.shape}")
    if encoding == "16UC1":
        if d.dtype != np.uint16:
            raise ValueError(f"16UC1 depth must be uint16, got {d.dtype}")
        return d.astype(np.float32) * np.float32(depth_scale)
    if encoding == "32FC1":
        out = d.astype(np.float32, copy=True)
        out[~(np.isfinite(out) & (out > 0))] = 0.0
        return out
    raise ValueError(f"unsupported depth encoding {encoding!r}; supported: {list(DEPTH_ENCODINGS)}")


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _ray_grid(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ray coordinates ``x/z``, ``y/z`` per pixel centre, each ``(H, W)`` float32."""
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    u = np.arange(width, dtype=np.float64)[None, :]
    v = np.arange(height, dtype=np.float64)[:, None]
    y = np.broadcast_to((v - cy) / fy, (height, width))
    x = (u - cx - s * y) / fx
    return x.astype(np.float32), np.ascontiguousarray(y, dtype=np.float32)


def _grow_mask(mask: np.ndarray, roi: Optional[tuple], px: int) -> np.ndarray:
    """``mask`` ``(H, W)`` bool dilated by a disc of ``px`` pixels; only ``roi = (x0, y0, x1, y1)``
    (grown by ``px``) is processed when given (the mask is empty outside it)."""
    if px <= 0 or not mask.any():
        return mask
    H, W = mask.shape
    x0, y0, x1, y1 = roi if roi is not None else (0, 0, W, H)
    x0, y0, x1, y1 = max(x0 - px, 0), max(y0 - px, 0), min(x1 + px, W), min(y1 + px, H)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = cv2.dilate(np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8), _disk(px)).astype(bool)
    return out


def _check_K(K) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"K must be a (3, 3) intrinsic matrix with positive focal lengths, got {K.tolist()}")
    return K


# ----------------------------------------------------------------------------- (a) hand mask

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
    filled face by face. The per-pixel hand depth comes from :func:`hp_ros.core.render.rasterize`
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
        self._parts, self._loose_faces = _convex_parts(faces, hand._np["mesh_verts"] if hasattr(hand, "_np")
                                                       else hand.posed_mesh(hand.zero_q())[0][0].detach().numpy())
        self._torch = torch

    def posed(self, q, T_cam_hand):
        """Posed mesh vertices ``(V, 3)`` and fingertips ``(4, 3)`` (float64, camera frame)."""
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
        from hp_ros.core.render import rasterize

        torch = self._torch
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
        # silhouette: convex hulls of the convex parts, loose faces one by one (4 fractional bits)
        uv16 = np.stack([u - x0, v - y0], -1) * 16.0
        crop = sil[y0:y1, x0:x1]
        for vids in self._parts:
            if not (z[vids] > self.near).all():
                continue
            hull = cv2.convexHull(np.round(uv16[vids]).astype(np.int32))
            cv2.fillConvexPoly(crop, hull, 1, lineType=cv2.LINE_8, shift=4)
        for f in self._loose_faces:
            if (z[f] > self.near).all():
                cv2.fillConvexPoly(crop, np.round(uv16[f]).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
        # depth: z-buffer of the front faces at depth_scale resolution (pixel centres mapped)
        s = self.depth_scale
        hw, hh = max(int(np.ceil((x1 - x0) * s)), 1), max(int(np.ceil((y1 - y0) * s)), 1)
        uvs = np.stack([(u - x0 + 0.5) * s - 0.5, (v - y0 + 0.5) * s - 0.5], -1)
        uvt = torch.from_numpy(np.nan_to_num(uvs, nan=-1e6)).float()[None]
        zt = torch.from_numpy(z).float()[None]
        fu = uvt[0][self._faces_t]
        area2 = (fu[:, 1, 0] - fu[:, 0, 0]) * (fu[:, 2, 1] - fu[:, 0, 1]) \
            - (fu[:, 2, 0] - fu[:, 0, 0]) * (fu[:, 1, 1] - fu[:, 0, 1])
        front = self._faces_t[area2 < 0]  # camera-facing faces only (closed parts)
        fr = rasterize(uvt, zt, front, (hh, hw), near=self.near)
        zlow = fr.zbuf[0].numpy().astype(np.float32)
        zc = cv2.resize(zlow, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        # silhouette rim pixels the low-resolution raster missed take the nearest depth around
        k = np.ones((3, 3), np.uint8)
        for _ in range(3):
            hole = (crop > 0) & ~np.isfinite(zc)
            if not hole.any():
                break
            zc = np.where(hole, cv2.erode(zc, k, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf), zc)
        zc[crop == 0] = np.inf
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
                 visibility_tolerance: float = 0.004, stride: int = 2, first_iterations: int = 8):
        self.visibility_tolerance = float(visibility_tolerance)
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

    def reset(self) -> None:
        self.correction = np.eye(4)
        self._frames = 0

    def _surface(self, q, T_cam_hand):
        import torch
        q_t = torch.as_tensor(np.asarray(q, dtype=np.float64).reshape(1, -1), dtype=self.hand.dtype)
        T = torch.as_tensor(np.asarray(T_cam_hand, dtype=np.float64).reshape(1, 4, 4), dtype=self.hand.dtype)
        with torch.no_grad():
            lp = self.hand.forward_kinematics(q_t, T)
            p, n = self.hand.surface_points(q_t, T, link_poses=lp, return_normals=True)
            tips = self.hand.fingertips(q_t, T, link_poses=lp)
        p, n = p[0, ::self.stride].numpy().astype(np.float64), n[0, ::self.stride].numpy().astype(np.float64)
        if self.marker_radius > 0:  # marker spheres hide the fingertip geometry: use theirs
            tips = tips[0].numpy().astype(np.float64)
            inside = (np.linalg.norm(p[:, None] - tips[None], axis=2) < self.marker_radius).any(1)
            sp = (tips[:, None] + self.marker_radius * self._sphere[None]).reshape(-1, 3)
            sn = np.tile(self._sphere, (4, 1))
            p, n = np.concatenate([p[~inside], sp]), np.concatenate([n[~inside], sn])
        return p, n

    def update(self, q, T_cam_hand, depth_m: np.ndarray, render: Optional[HandRender] = None) -> np.ndarray:
        """One frame: refine the correction; returns the corrected ``T_cam_hand`` ``(4, 4)``.

        ``render``: the hand rendered at the current estimate (``correction @ T_cam_hand``); its
        z-buffer drops samples hidden by other parts of the hand (self-occlusion)."""
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
            self.correction = C
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


# ----------------------------------------------------------------------------- (b) colour models

def object_surface_colors(obj, n_samples: int = 20000, seed: int = 0) -> np.ndarray:
    """``(n_samples, 3)`` uint8 RGB colours of area-uniform samples of an object's surface.

    ``obj``: :class:`hp_ros.core.objects.ObjectModel` (uses ``trimesh``, ``uv``/``texture`` when
    present, else ``vertex_colors``). Texture look-up: nearest texel at the barycentric-
    interpolated UV (v up, as in :mod:`hp_ros.core.objects`)."""
    import trimesh

    mesh = obj.trimesh
    pts, fi = trimesh.sample.sample_surface(mesh, int(n_samples), seed=seed)
    tri = np.asarray(mesh.faces)[fi]
    bary = trimesh.triangles.points_to_barycentric(np.asarray(mesh.vertices)[tri], pts)
    uv = None if obj.uv is None else obj.uv.detach().cpu().numpy().astype(np.float64)
    tex = None if obj.texture is None else obj.texture.detach().cpu().numpy()
    if uv is not None and tex is not None:
        st = (uv[tri] * bary[:, :, None]).sum(1)
        th, tw = tex.shape[:2]
        u = np.clip(np.round((st[:, 0] % 1.0) * (tw - 1)), 0, tw - 1).astype(np.int64)
        v = np.clip(np.round((1.0 - st[:, 1] % 1.0) * (th - 1)), 0, th - 1).astype(np.int64)
        col = tex[v, u, :3]
    else:
        vc = obj.vertex_colors.detach().cpu().numpy().astype(np.float64)
        col = (vc[tri] * bary[:, :, None]).sum(1)
    return np.clip(np.round(np.asarray(col, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _parse_hsv_ranges(ranges: Sequence[float]) -> np.ndarray:
    r = np.asarray(ranges, dtype=np.float64).reshape(-1)
    if r.size == 0 or r.size % 6:
        raise ValueError("HSV ranges need 6 numbers per range: h_min s_min v_min h_max s_max v_max "
                         f"(OpenCV units: H 0-180, S and V 0-255), got {r.size} numbers")
    r = r.reshape(-1, 6)
    if (r < 0).any() or (r[:, [0, 3]] > 180).any() or (r[:, [1, 2, 4, 5]] > 255).any():
        raise ValueError(f"HSV ranges out of bounds (H 0-180, S/V 0-255): {r.tolist()}")
    return r


class HSVColorModel:
    """Object = pixels inside any of several HSV boxes (OpenCV units: H 0-180, S, V 0-255).

    ``ranges``: flat list ``[h_min, s_min, v_min, h_max, s_max, v_max, ...]``; a range with
    ``h_min > h_max`` wraps around red (e.g. 170..10).
    """

    def __init__(self, ranges: Sequence[float]):
        self.ranges = _parse_hsv_ranges(ranges)

    def mask(self, hsv: np.ndarray) -> np.ndarray:
        """``hsv`` ``(H, W, 3)`` uint8 (``cv2.COLOR_RGB2HSV``) -> ``(H, W)`` bool."""
        out = np.zeros(hsv.shape[:2], np.uint8)
        for h0, s0, v0, h1, s1, v1 in self.ranges:
            spans = [(h0, h1)] if h0 <= h1 else [(h0, 180), (0, h1)]
            for a, b in spans:
                out |= cv2.inRange(hsv, (a, s0, v0), (b, s1, v1))
        return out > 0


class HistogramColorModel:
    """Hue-saturation histogram of the object, back-projected (``cv2.calcBackProject``).

    Learned from a first good mask (:meth:`learn`), then blended with each new confident mask at
    ``rate`` (slow update follows lighting changes without drifting onto the background). The
    histogram is the object's H-S histogram divided by the frame's (a likelihood ratio), so
    colours common in the background score low.
    """

    def __init__(self, h_bins: int = 30, s_bins: int = 32, threshold: float = 0.5, rate: float = 0.05,
                 min_value: int = 30):
        if not 0 < threshold <= 1 or not 0 <= rate <= 1:
            raise ValueError(f"threshold must be in (0, 1] and rate in [0, 1], got {threshold}, {rate}")
        self.bins = [int(h_bins), int(s_bins)]
        self.threshold, self.rate, self.min_value = float(threshold), float(rate), int(min_value)
        self.hist: Optional[np.ndarray] = None
        self.object_hist: Optional[np.ndarray] = None   # set by from_object_model()
        self.background_set = False

    @property
    def ready(self) -> bool:
        return self.hist is not None

    def _hist(self, hsv: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
        m = None if mask is None else mask.astype(np.uint8) * 255
        return cv2.calcHist([hsv], [0, 1], m, self.bins, [0, 180, 0, 256])

    @staticmethod
    def _ratio(obj: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Object / background histogram ratio scaled so its 90th percentile over the object's
        bins is 1, clipped to [0, 1] (both histograms normalised here)."""
        obj = obj / max(float(obj.sum()), 1e-12)
        background = background / max(float(background.sum()), 1e-12)
        ratio = obj / (background + 1e-6)
        return np.minimum(ratio / max(np.percentile(ratio[obj > 0], 90), 1e-9), 1.0).astype(np.float32)

    def learn(self, hsv: np.ndarray, mask: np.ndarray) -> None:
        """Learn (first call) or blend in (later calls) the object histogram from ``mask``."""
        mask = mask & (hsv[..., 2] >= self.min_value)
        if not mask.any():
            return
        ratio = self._ratio(self._hist(hsv, mask), self._hist(hsv, None))
        self.hist = ratio if self.hist is None else (1 - self.rate) * self.hist + self.rate * ratio

    @classmethod
    def from_object_model(cls, obj, n_samples: int = 20000, hue_sigma_bins: float = 1.0, seed: int = 0,
                          background_hsv: Optional[np.ndarray] = None, **kwargs) -> "HistogramColorModel":
        """Colour model learned from the known object model instead of a first mask.

        The surface is sampled area-uniformly (``trimesh.sample.sample_surface``), each sample's
        colour is read from the texture at its barycentric-interpolated UV (or interpolated from
        the vertex colours when the model has no texture), so the histogram weights colours by
        how much surface they cover. The hue axis is blurred (circularly, ``hue_sigma_bins``) to
        tolerate the camera's colour rendition differing from the texture's. The background is
        ``background_hsv`` (e.g. the first frame; see :meth:`relative_to`) or uniform; the
        back-projected value is ``p_obj / (p_obj + p_image)``, which exceeds 1/2 exactly where
        the object's colour density exceeds the background's (equal priors), however much of
        the image the object covers.

        Args:
            obj: :class:`hp_ros.core.objects.ObjectModel`.
            kwargs: ``h_bins``, ``s_bins``, ``threshold``, ``rate``, ``min_value``.
        """
        from scipy.ndimage import gaussian_filter1d

        model = cls(**kwargs)
        rgb = object_surface_colors(obj, n_samples, seed)
        hsv = cv2.cvtColor(rgb[None], cv2.COLOR_RGB2HSV)
        keep = (hsv[0, :, 2] >= model.min_value).astype(np.uint8)[None] * 255
        h = cv2.calcHist([hsv], [0, 1], keep, model.bins, [0, 180, 0, 256])
        if hue_sigma_bins > 0:
            h = gaussian_filter1d(h, float(hue_sigma_bins), axis=0, mode="wrap")
        if not h.sum() > 0:
            raise ValueError(f"object model {getattr(obj, 'name', '')!r}: no surface colour brighter than "
                             f"min_value={model.min_value}")
        model.object_hist = h.astype(np.float32)
        model.relative_to(background_hsv)
        return model

    def relative_to(self, background_hsv: Optional[np.ndarray]) -> None:
        """Recompute the ratio histogram of a model-derived object histogram against the colours
        of ``background_hsv`` ``(H, W, 3)`` (None = uniform background)."""
        obj = self.object_hist
        if obj is None:
            raise RuntimeError("relative_to() needs a model built by from_object_model()")
        bg = np.ones_like(obj) if background_hsv is None else self._hist(background_hsv, None)
        p_obj = obj / max(float(obj.sum()), 1e-12)
        p_img = bg / max(float(bg.sum()), 1e-12)
        # p_obj / (p_obj + p_img) > 1/2  <=>  p_obj > p_img  <=>  p_obj > p_background whatever
        # share of the image the object covers: the equal-prior Bayes decision at threshold 0.5
        self.hist = (p_obj / (p_obj + p_img + 1e-12)).astype(np.float32)
        self.background_set = background_hsv is not None

    def mask(self, hsv: np.ndarray) -> np.ndarray:
        if self.hist is None:
            raise RuntimeError("histogram colour model not learned yet: call learn() with a good mask")
        bp = cv2.calcBackProject([hsv], [0, 1], (self.hist * 255).astype(np.float32), [0, 180, 0, 256], 1)
        return (bp >= 255 * self.threshold) & (hsv[..., 2] >= self.min_value)


# ----------------------------------------------------------------------------- (c) depth box

class DepthBoxForeground:
    """Pixels whose back-projected point lies inside an axis-aligned box.

    The box ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (metres) is expressed in the camera
    frame (``frame="camera"``) or in the hand-base frame (``frame="hand"``, needs ``T_cam_hand``:
    a box that moves with the hand, natural for a held object). Per pixel
    ``p_box = R^T (d * ray - t)`` is linear in the depth ``d``, so the per-pixel coefficients are
    evaluated inside the box's projected image rectangle only.
    """

    def __init__(self, K, width: int, height: int, box: Sequence[float], frame: str = "camera"):
        self.K = _check_K(K)
        self.width, self.height = int(width), int(height)
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.size != 6 or not (b[:3] < b[3:]).all():
            raise ValueError(f"workspace box must be [x_min y_min z_min x_max y_max z_max] with min < max, got {b.tolist()}")
        if frame not in ("camera", "hand"):
            raise ValueError(f"workspace frame must be 'camera' or 'hand', got {frame!r}")
        self.lo, self.hi, self.frame = b[:3], b[3:], frame
        self._rx, self._ry = _ray_grid(self.K, self.width, self.height)

    def mask(self, depth_m: np.ndarray, T_cam_hand: Optional[np.ndarray] = None) -> np.ndarray:
        """``depth_m`` ``(H, W)`` metres (0 = invalid) -> ``(H, W)`` bool.

        Only the image rectangle the box projects to is evaluated (per pixel
        ``p_box = R^T (d * ray - t)``, linear in the depth ``d``)."""
        if depth_m.shape != (self.height, self.width):
            raise ValueError(f"depth is {depth_m.shape}, the camera is {(self.height, self.width)}")
        if self.frame == "hand" and T_cam_hand is None:
            raise ValueError("a workspace box in the hand frame needs T_cam_hand")
        out = np.zeros((self.height, self.width), bool)
        r = self.project_box(T_cam_hand)
        if r is None:
            return out
        x0, y0, x1, y1 = r
        T = np.eye(4) if self.frame == "camera" else np.asarray(T_cam_hand, dtype=np.float64)
        Rt = T[:3, :3].T
        off = -Rt @ T[:3, 3]
        d = np.ascontiguousarray(depth_m[y0:y1, x0:x1], dtype=np.float32)
        rx, ry = self._rx[y0:y1, x0:x1], self._ry[y0:y1, x0:x1]
        m = None
        for i in range(3):  # OpenCV passes: coefficient, times depth, range test
            c = cv2.addWeighted(rx, float(Rt[i, 0]), ry, float(Rt[i, 1]), float(Rt[i, 2]))
            p = cv2.multiply(d, c)
            mi = cv2.inRange(p, float(self.lo[i] - off[i]), float(self.hi[i] - off[i]))
            m = mi if m is None else cv2.bitwise_and(m, mi)
        m = cv2.bitwise_and(m, cv2.inRange(d, 1e-6, np.inf))
        out[y0:y1, x0:x1] = m > 0
        return out

    def project_box(self, T_cam_hand: Optional[np.ndarray] = None) -> Optional[tuple[int, int, int, int]]:
        """Image bounding rectangle ``(x0, y0, x1, y1)`` (exclusive ends) of the box, clipped to the
        image; None when the box is entirely behind the camera or off-image."""
        corners = np.array([[x, y, z] for x in (self.lo[0], self.hi[0]) for y in (self.lo[1], self.hi[1])
                            for z in (self.lo[2], self.hi[2])])
        if self.frame == "hand":
            T = np.asarray(T_cam_hand, dtype=np.float64)
            corners = corners @ T[:3, :3].T + T[:3, 3]
        z = corners[:, 2]
        if (z <= 1e-3).all():
            return None
        if (z <= 1e-3).any():
            return 0, 0, self.width, self.height
        uv = (corners @ self.K.T)[:, :2] / z[:, None]
        x0, y0 = np.floor(uv.min(0)).astype(int)
        x1, y1 = np.ceil(uv.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.width), min(y1, self.height)
        return None if x0 >= x1 or y0 >= y1 else (x0, y0, x1, y1)


# ----------------------------------------------------------------------------- (e) detectron2

class Detectron2Backend:
    """Instance segmentation with detectron2 (e.g. PointRend) from a user config and weights.

    Only available when ``detectron2`` is importable (it is not on PyPI); construction raises
    ``ImportError`` with a readable message otherwise. The mask of the highest-scoring instance
    of ``class_id`` (any class when < 0) above ``score_threshold`` is returned.
    """

    def __init__(self, config_file: str, weights: str, class_id: int = -1, score_threshold: float = 0.5,
                 device: str = "cpu"):
        try:
            from detectron2.config import get_cfg
            from detectron2.engine import DefaultPredictor
        except ImportError as e:
            raise ImportError("the detectron2 backend needs detectron2 (not installable from PyPI); "
                              "install it and its PointRend project, or choose another object backend") from e
        if not config_file or not weights:
            raise ValueError("the detectron2 backend needs detectron2_config and detectron2_weights")
        cfg = get_cfg()
        try:  # PointRend configs need their config keys registered
            from detectron2.projects import point_rend
            point_rend.add_pointrend_config(cfg)
        except ImportError:
            pass
        cfg.merge_from_file(config_file)
        cfg.MODEL.WEIGHTS = weights
        cfg.MODEL.DEVICE = device
        self.class_id, self.score_threshold = int(class_id), float(score_threshold)
        self.predictor = DefaultPredictor(cfg)

    def mask(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """``rgb`` ``(H, W, 3)`` -> (``(H, W)`` bool mask, score); empty mask and 0 when none."""
        out = self.predictor(np.ascontiguousarray(rgb[..., ::-1]))["instances"].to("cpu")
        scores = out.scores.numpy()
        keep = scores >= self.score_threshold
        if self.class_id >= 0:
            keep &= out.pred_classes.numpy() == self.class_id
        if not keep.any():
            return np.zeros(rgb.shape[:2], bool), 0.0
        i = int(np.argmax(np.where(keep, scores, -1)))
        return out.pred_masks[i].numpy().astype(bool), float(scores[i])


# ----------------------------------------------------------------------------- (f) model at a pose prior

@dataclass
class ModelFit:
    """Result of :meth:`ModelObjectMasker.fit` for one frame.

    mask: ``(y1 - y0, x1 - x0)`` bool object pixels inside ``rect = (x0, y0, x1, y1)``.
    T_cam_obj: ``(4, 4)`` camera->object pose refined against depth.
    confidence: share of the rendered silhouette's valid-depth pixels that depth confirms,
        scaled down when less than half of the silhouette has depth; 0 when nothing is seen.
    inliers: depth points + model samples used in the last refinement step.
    covariance: ``(6, 6)`` covariance of ``T_cam_obj`` from the ICP's normal matrix (depth noise
        only, see :func:`icp_pose_covariance`) in the :func:`hp_ros.core.se3.apply_delta`
        convention of the EKF (x, y, z in the camera frame, then the rotation vector about the
        object origin); None without a refinement step (``iterations = 0`` or too few inliers).
    residual_sigma: ``(2,)`` robust RMS [m] of the two ICP terms' residuals at the result
        (measured points to the surface, model samples to depth); NaN without a refinement.
    """

    mask: np.ndarray
    rect: tuple
    T_cam_obj: np.ndarray
    confidence: float
    inliers: int = 0
    covariance: Optional[np.ndarray] = None
    residual_sigma: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))


# signed-distance grids per object model (building one takes ~1-3 s), keyed by grid parameters
_SDF_GRIDS: "weakref.WeakKeyDictionary" = None


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of ``(N, 3)`` arrays (np.cross costs ~30 us of overhead a call)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], 1)


def icp_pose_covariance(J: np.ndarray, r: np.ndarray, huber: np.ndarray, n1: int, t: np.ndarray):
    """Covariance of the pose found by :class:`ModelObjectMasker`'s robust ICP, from its normal matrix.

    Args:
        J: ``(M, 6)`` Jacobian of the residuals w.r.t. the ICP's left perturbation ``(v, w)``
            (``T' = [exp(w) | v] T``, camera frame); rows ``[:n1]`` are the first term (measured
            points to the surface), rows ``[n1:]`` the second (model samples to depth).
        r: ``(M,)`` residuals [m] at the result. huber: ``(M,)`` Huber weights in (0, 1].
        n1: number of first-term rows. t: ``(3,)`` translation of the result (camera frame).

    The ICP step solves ``A xi = -J^T W r`` with ``A = J^T W J`` and ``W = huber / (its term's
    count)`` (each term averaged). Those weights are not inverse variances, so the covariance of
    ``xi`` under independent residual noise of variance ``s_k^2`` per term is the sandwich
    ``A^-1 (J^T W S W J) A^-1``; ``s_k^2`` is the Huber-weighted mean square of the term's
    residuals. Checked against the scatter of fits over depth-noise draws
    (``test/test_ekf_physics_depth.py``; box, 3 faces seen): per axis 0.7-1.0 x the predicted
    sigma, per direction 0.26-1.5 x the predicted variance - conservative; the residuals also
    hold the model's own misfit (SDF grid, pixel rounding), which does not scatter. Weighting
    each row by the stereo noise law along its ray (``z |n . X|``) matched no better (0.45-3.7x,
    one direction under-stated). Directions the geometry does not constrain (the spin of a body of revolution) get
    a variance of ~1e9 x the constrained ones (eigenvalues of ``A`` floored), not infinity.
    The result is mapped to the EKF's :func:`hp_ros.core.se3.apply_delta` convention
    (``t' = t + v_a``, rotation about the object origin): ``v_a = v - [t]x w``.

    This is the depth *noise* part only: model and occlusion errors correlated over frames are
    not in it (the tracker's depth-fit noise model adds them, measured in ``bench_ekf.py``).
    Returns ``(covariance (6, 6), sigma (2,) per-term RMS [m], NaN for an empty term)``.
    """
    J, r, huber = np.asarray(J, np.float64), np.asarray(r, np.float64), np.asarray(huber, np.float64)
    m = len(r)
    var, sigma = np.zeros(m), np.full(2, np.nan)
    cnt = np.zeros(m)
    for k, sl in enumerate((slice(0, n1), slice(n1, m))):
        h, rk = huber[sl], r[sl]
        if len(rk):
            sigma[k] = np.sqrt(float((h * rk * rk).sum() / max(float(h.sum()), 1e-12)))
            var[sl], cnt[sl] = sigma[k] ** 2, len(rk)
    w = huber / np.maximum(cnt, 1.0)
    Jw = J * w[:, None]
    A = Jw.T @ J
    B = (Jw * var[:, None]).T @ Jw                       # J^T W S W J
    lam, V = np.linalg.eigh((A + A.T) / 2)
    lam = np.maximum(lam, 1e-9 * max(float(lam[-1]), 1e-300))
    Ai = (V / lam) @ V.T
    C = Ai @ B @ Ai
    M = np.eye(6)
    tx = np.asarray(t, np.float64)
    M[:3, 3:] = -np.array([[0.0, -tx[2], tx[1]], [tx[2], 0.0, -tx[0]], [-tx[1], tx[0], 0.0]])
    C = M @ C @ M.T
    return (C + C.T) / 2, sigma


def _sdf_grid(obj, pad: float, grid_size: int):
    """``(lo (3,), voxel, sdf (nx, ny, nz) float32, vertices (V, 3), faces (F, 3) long tensor)``
    of an object model's signed distance (:class:`hp_ros.core.sdf.MeshSDF`, negative inside)
    sampled on a grid over its bounding box grown by ``pad``; cached per model."""
    global _SDF_GRIDS
    import warnings
    import weakref

    import torch

    from hp_ros.core.sdf import MeshSDF

    if _SDF_GRIDS is None:
        _SDF_GRIDS = weakref.WeakKeyDictionary()
    per_obj = _SDF_GRIDS.setdefault(obj, {})
    key = (round(float(pad), 6), int(grid_size), int(obj.faces.shape[0]))
    if key not in per_obj:
        with warnings.catch_warnings():  # open meshes fall back to the winding-number sign: fine here
            warnings.simplefilter("ignore", UserWarning)
            sdf = MeshSDF(obj.vertices, obj.faces, max_dist=pad * 1.5)
        verts = sdf.vertices.numpy().astype(np.float64)
        lo, hi = verts.min(0) - pad, verts.max(0) + pad
        voxel = float((hi - lo).max() / (int(grid_size) - 1))
        n = np.ceil((hi - lo) / voxel).astype(int) + 1
        g = np.stack(np.meshgrid(*[lo[i] + voxel * np.arange(n[i]) for i in range(3)], indexing="ij"), -1)
        with torch.no_grad():
            d = sdf.query(torch.from_numpy(g.reshape(-1, 3)).float())[0].numpy().reshape(tuple(n))
        per_obj[key] = (lo, voxel, np.ascontiguousarray(d, dtype=np.float32), verts, sdf.faces)
    return per_obj[key]


class ModelObjectMasker:
    """Object mask from the known object model at a pose prior (e.g. the tracker's estimate).

    Per frame (:meth:`fit`), with the search margin ``m = clip(3 prior_pos_sigma, margin,
    max_margin)``:

    1. Coarse search: the prior shifted across the view on a ``7 x 7`` grid of spacing ``m / 3``
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
        n_samples: model surface samples.
    """

    def __init__(self, obj, K, width: int, height: int, margin: float = 0.02, tolerance: float = 0.006,
                 iterations: int = 8, scale: float = 0.5, dilate_px: int = 2, max_margin: float = 0.04,
                 max_points: int = 1200, n_samples: int = 1500, grid_size: int = 56, min_points: int = 30):
        _check_model_settings(margin, tolerance, max_margin, iterations, scale, dilate_px)
        self.K = _check_K(K)
        self.width, self.height = int(width), int(height)
        self.margin, self.tolerance, self.max_margin = float(margin), float(tolerance), float(max_margin)
        self.iterations, self.scale, self.dilate_px = int(iterations), float(scale), int(dilate_px)
        self.max_points, self.min_points = int(max_points), int(min_points)
        self.converged = (1e-4, 1e-4)   # ICP step (m, rad) below which a gate phase has converged
        self.wide_every = (3, 2)        # (measured point, model sample) strides before the final gate
        self._rx, self._ry = _ray_grid(self.K, self.width, self.height)
        lo, voxel, sdf, verts, faces = _sdf_grid(obj, 1.2 * self.max_margin, grid_size)
        self._grid_lo, self._voxel, self._sdf = lo, voxel, sdf
        self._verts, self._faces_t = verts, faces
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
        import torch

        from hp_ros.core.render import rasterize

        x0, y0, x1, y1 = rect
        K = self.K
        p = self._verts @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
        z = p[:, 2]
        zs = np.where(z > 1e-3, z, np.nan)
        u = ((K[0, 0] * p[:, 0] + K[0, 1] * p[:, 1]) / zs + K[0, 2] - x0 + 0.5) * scale - 0.5
        v = (K[1, 1] * p[:, 1] / zs + K[1, 2] - y0 + 0.5) * scale - 0.5
        uv = torch.from_numpy(np.nan_to_num(np.stack([u, v], -1), nan=-1e6)).float()
        fu = uv[self._faces_t]
        area2 = (fu[:, 1, 0] - fu[:, 0, 0]) * (fu[:, 2, 1] - fu[:, 0, 1]) \
            - (fu[:, 2, 0] - fu[:, 0, 0]) * (fu[:, 1, 1] - fu[:, 0, 1])
        front = self._faces_t[area2 < 0]   # camera-facing faces (outward winding)
        size = (max(int(np.ceil((y1 - y0) * scale)), 1), max(int(np.ceil((x1 - x0) * scale)), 1))
        fr = rasterize(uv[None], torch.from_numpy(z).float()[None], front, size, near=1e-3)
        return fr.zbuf[0].numpy().astype(np.float32)

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
        if len(P):
            P = P[np.abs(self.signed_distance((P - T[:3, 3]) @ T[:3, :3])) < margin]
        if len(P) > self.max_points:
            P = P[np.linspace(0, len(P) - 1, self.max_points).astype(np.int64)]
        return P

    def _refine(self, T: np.ndarray, P: np.ndarray, depth_m, exclude, margin: float):
        """Step 2 of the class doc; returns the refined pose, the last step's inlier count and
        that step's system ``(J (M, 6), residuals after the step (M,), Huber weights (M,), n1)``
        at the final gate (None when no step ran there), for :func:`icp_pose_covariance`.

        A step smaller than ``converged`` (m, rad) ends the wide-gate phase at once (the gate jumps
        to its final ``2 tolerance``) and, at the final gate, the refinement."""
        huber = 0.5 * self.tolerance
        n_it, inliers = self.iterations, 0
        final_gate = 2.0 * self.tolerance
        it = 0
        system = None
        for _ in range(n_it):
            gate = margin * (final_gate / margin) ** (min(it, n_it - 1) / max(n_it - 1, 1))
            # the wide-gate steps only bring the pose near: subsets do that as well, cheaper
            wide = it < n_it - 1
            Pi = P[::self.wide_every[0]] if wide else P
            R, t = T[:3, :3], T[:3, 3]
            # residual r + J xi for a left perturbation (v, w) of the pose, each term averaged:
            # measured points to the surface (signed distance), then model samples to depth
            s, g = self.signed_distance((Pi - t) @ R, gradient=True)
            n = g @ R.T                                                      # outward normals
            keep = (np.abs(s) < gate) & (np.einsum("ij,ij->i", n, Pi) < 0)  # camera-facing side
            q, nq, dq = self._visible_samples(T, depth_m, exclude, self.wide_every[1] if wide else 1)
            ok = (dq > 0) & (np.abs(dq - q[:, 2]) < gate)
            r2 = np.einsum("ij,ij->i", q, nq) * (1.0 - dq / q[:, 2])
            # both terms in one system: points X, normals N (sign folded in), J = [N, X x N]
            # (a term with fewer than min_points inliers is left out)
            none = np.zeros(0, dtype=np.int64)
            i1, i2 = np.flatnonzero(keep), np.flatnonzero(ok)
            i1, i2 = (i1 if len(i1) >= self.min_points else none), (i2 if len(i2) >= self.min_points else none)
            n1, inliers = len(i1), len(i1) + len(i2)
            if not inliers:
                break
            X = np.concatenate([np.take(Pi, i1, axis=0), np.take(q, i2, axis=0)])
            J = np.empty((inliers, 6))                                      # [N, X x N]
            J[:n1, :3], J[n1:, :3] = -np.take(n, i1, axis=0), np.take(nq, i2, axis=0)
            J[:, 3:] = _cross(X, J[:, :3])
            r = np.concatenate([np.take(s, i1), np.take(r2, i2)])
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
        T = self._coarse_search(T, depth_m, exclude, margin)
        T, inliers, system = self._refine(T, self._depth_points(depth_m, exclude, T, margin), depth_m, exclude,
                                          margin)
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


# ----------------------------------------------------------------------------- clean-up

@dataclass
class CleanResult:
    """Cleaned mask ``(H, W)`` bool and its confidence in [0, 1]."""

    mask: np.ndarray
    confidence: float


def _fill_holes(mask_u8: np.ndarray) -> np.ndarray:
    """Fill enclosed background regions of a uint8 0/1 mask (outer contours drawn filled)."""
    cnts, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = mask_u8.copy()
    if cnts:
        cv2.drawContours(out, cnts, -1, 1, thickness=cv2.FILLED)
    return out


def extent_3d(points: np.ndarray, lo: float = 5.0, hi: float = 95.0, max_points: int = 4000) -> float:
    """Robust 3D size (m) of a point set ``(N, 3)``: the diagonal of its box along the principal
    axes (PCA) spanning the ``lo``-``hi`` percentiles per axis (flying pixels at depth edges
    do not count). Comparable with a mesh's diameter (the box diagonal of a box-like object) for
    any orientation, unlike a camera-axis-aligned box. NaN for fewer than 10 points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(p) < 10:
        return float("nan")
    if len(p) > max_points:  # evenly spaced subset: the percentiles need no more
        p = p[np.linspace(0, len(p) - 1, max_points).astype(np.int64)]
    p = p - p.mean(0)
    _, _, Vt = np.linalg.svd(p, full_matrices=False)
    q = p @ Vt.T
    return float(np.linalg.norm(np.percentile(q, hi, axis=0) - np.percentile(q, lo, axis=0)))


def clean_mask(mask: np.ndarray, min_area: int = 50, open_px: int = 1, close_px: int = 2,
               fill_holes: bool = True, keep: str = "largest",
               prior_uv: Optional[Sequence[float]] = None, expected_area: Optional[float] = None,
               points: Optional[np.ndarray] = None, expected_size: Optional[float] = None,
               size_tolerance: float = 2.0) -> CleanResult:
    """Keep the most plausible connected component of ``mask`` and tidy it.

    Steps: morphological opening (``open_px``, removes speckle) -> connected components
    (``cv2.connectedComponentsWithStats``, 8-connected) -> keep one component: the largest
    (``keep="largest"``) or the largest area / (1 + distance to ``prior_uv`` / sqrt(area))
    (``keep="near_prior"``, e.g. the hand's palm) -> closing (``close_px``) -> hole filling.

    Object-size plausibility (``points`` ``(H, W, 3)`` camera-frame back-projection of the
    mask's pixels, z = 0 where invalid, and ``expected_size`` = the object model's diameter, m):
    each component's 3D extent (:func:`extent_3d` of its valid points) gives
    ``size_score = min(e, s) / max(e, s)``; components with ``size_score < 1 / size_tolerance``
    (more than ``size_tolerance`` times too large or too small: a table top, a speck) are
    rejected, the others' score above is multiplied by it, and so is the confidence.
    Components with fewer than 10 valid depth pixels are not checked (score 1).

    Confidence = (share of the foreground held by the kept component) x (area plausibility:
    ``min(a, e) / max(a, e)`` against ``expected_area`` when given, else 1) x size score; 0
    when nothing of ``min_area`` pixels or more remains.
    """
    if keep not in ("largest", "near_prior"):
        raise ValueError(f"keep must be 'largest' or 'near_prior', got {keep!r}")
    full = np.zeros(mask.shape, bool)
    # work in the mask's bounding rectangle, padded for the closing
    bx, by, bw, bh = cv2.boundingRect(mask.view(np.uint8) if mask.dtype == bool else (mask > 0).astype(np.uint8))
    if bw == 0 or bh == 0:
        return CleanResult(full, 0.0)
    pad = max(int(close_px), 0) + 1
    X0, Y0 = max(bx - pad, 0), max(by - pad, 0)
    X1, Y1 = min(bx + bw + pad, mask.shape[1]), min(by + bh + pad, mask.shape[0])
    m = (mask[Y0:Y1, X0:X1] > 0).astype(np.uint8)
    if prior_uv is not None:
        prior_uv = np.asarray(prior_uv, dtype=np.float64) - (X0, Y0)
    if open_px > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(open_px))
    n, labels, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return CleanResult(full, 0.0)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    if keep == "near_prior" and prior_uv is not None and np.all(np.isfinite(prior_uv)):
        dist = np.linalg.norm(cents[1:] - np.asarray(prior_uv, dtype=np.float64)[None], axis=1)
        score = areas / (1.0 + dist / np.sqrt(areas))
    else:
        score = areas
    size_score = np.ones_like(areas)
    if points is not None and expected_size:
        if points.shape != mask.shape + (3,):
            raise ValueError(f"points must be {mask.shape + (3,)}, got {points.shape}")
        if not expected_size > 0 or not size_tolerance >= 1:
            raise ValueError(f"expected_size must be > 0 m and size_tolerance >= 1, got {expected_size}, "
                             f"{size_tolerance}")
        pc = points[Y0:Y1, X0:X1]
        for j in np.nonzero(areas >= min_area)[0]:
            e = extent_3d(pc[(labels == 1 + j) & (pc[..., 2] > 0)])
            if np.isfinite(e):
                size_score[j] = min(e, expected_size) / max(e, expected_size, 1e-9)
        score = score * size_score
    eligible = (areas >= min_area) & (size_score >= 1.0 / size_tolerance)
    if not eligible.any():
        return CleanResult(full, 0.0)
    best = int(np.argmax(np.where(eligible, score, -1.0)))
    out = (labels == 1 + best).astype(np.uint8)
    if close_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(close_px))
    if fill_holes:
        out = _fill_holes(out)
    conf = areas[best] / areas.sum() * size_score[best]
    if expected_area:
        conf *= min(areas[best], expected_area) / max(areas[best], expected_area)
    full[Y0:Y1, X0:X1] = out > 0
    return CleanResult(full, float(conf))


# ----------------------------------------------------------------------------- observation

@dataclass
class ObjectObservation:
    """What the mask says about the object (field meanings as in hp_ros_msgs/ObjectObservation).

    bbox: ``(x_offset, y_offset, width, height)`` pixels; median_depth metres (NaN without
    depth); center_3d ``(3,)`` camera frame (None without depth).
    """

    valid: bool
    confidence: float = 0.0
    centroid_u: float = float("nan")
    centroid_v: float = float("nan")
    bbox: tuple = (0, 0, 0, 0)
    area: int = 0
    median_depth: float = float("nan")
    center_3d: Optional[np.ndarray] = None
    backend: str = ""


def object_observation(mask: np.ndarray, K, depth_m: Optional[np.ndarray] = None, confidence: float = 1.0,
                       backend: str = "", offset: tuple = (0, 0)) -> ObjectObservation:
    """Centroid (pixel centres), bounding box, area, median valid depth inside ``mask`` and the
    centroid back-projected at that depth. ``mask`` (and ``depth_m``) may be a crop whose
    top-left pixel is ``offset = (x0, y0)`` of the image."""
    K = _check_K(K)
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return ObjectObservation(valid=False, backend=backend)
    d = None if depth_m is None else depth_m[ys, xs]
    xs, ys = xs + int(offset[0]), ys + int(offset[1])
    cu, cv = float(xs.mean()), float(ys.mean())
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)
    med, c3 = float("nan"), None
    if d is not None:
        d = d[d > 0]
        if d.size:
            med = float(np.median(d))
            y = (cv - K[1, 2]) / K[1, 1]
            x = (cu - K[0, 2] - K[0, 1] * y) / K[0, 0]
            c3 = np.array([x * med, y * med, med])
    return ObjectObservation(True, float(confidence), cu, cv, bbox, int(xs.size), med, c3, backend)


# ----------------------------------------------------------------------------- fingertip markers

@dataclass
class FingertipResult:
    """Marker detections: ``uv`` ``(4, 2)`` (NaN when not seen), ``confidence`` ``(4,)``,
    FK projections ``fk_uv`` ``(4, 2)``; order thumb, index, middle, ring."""

    uv: np.ndarray
    confidence: np.ndarray
    fk_uv: np.ndarray


def _rgb_to_hsv_pixel(rgb: Sequence[float]) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float64).reshape(1, 1, 3)
    if c.max() <= 1.0:
        c = c * 255.0
    return cv2.cvtColor(np.clip(np.round(c), 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)[0, 0].astype(np.int32)


class FingertipMarkerDetector:
    """Coloured fingertip markers near the FK-projected fingertips.

    Args:
        colors: 4 RGB colours (0-255, or 0-1), thumb, index, middle, ring.
        hue_tolerance: accepted hue distance (OpenCV units, 0-90, circular).
        min_saturation, min_value: lower bounds that reject grey/dark pixels.
        window_px: half side of the search window around the FK projection (rejects clutter;
            must exceed the calibration error in pixels).
        marker_radius: physical marker radius (m), gives the expected blob area for the
            confidence ``min(1, area / (pi (f r / z)^2))``.
        min_area: blobs smaller than this (pixels) are ignored.
    """

    def __init__(self, colors: Sequence[Sequence[float]], hue_tolerance: int = 10, min_saturation: int = 100,
                 min_value: int = 60, window_px: int = 40, marker_radius: float = 0.006, min_area: int = 4):
        cols = np.asarray(colors, dtype=np.float64).reshape(-1, 3)
        if cols.shape[0] != 4:
            raise ValueError(f"need 4 marker colours (thumb, index, middle, ring), got {cols.shape[0]}")
        self.hues = np.array([_rgb_to_hsv_pixel(c)[0] for c in cols])
        self.hue_tolerance, self.min_saturation, self.min_value = int(hue_tolerance), int(min_saturation), int(min_value)
        self.window_px, self.marker_radius, self.min_area = int(window_px), float(marker_radius), int(min_area)

    def detect(self, rgb: np.ndarray, fk_uv: np.ndarray, fk_z: np.ndarray, focal: float) -> FingertipResult:
        """``rgb`` ``(H, W, 3)`` uint8, FK fingertip pixels ``(4, 2)`` and depths ``(4,)``."""
        H, W = rgb.shape[:2]
        uv = np.full((4, 2), np.nan)
        conf = np.zeros(4)
        for i in range(4):
            cu, cv = fk_uv[i]
            if not (np.isfinite(cu) and np.isfinite(cv)):
                continue
            x0, x1 = int(max(np.floor(cu) - self.window_px, 0)), int(min(np.ceil(cu) + self.window_px + 1, W))
            y0, y1 = int(max(np.floor(cv) - self.window_px, 0)), int(min(np.ceil(cv) + self.window_px + 1, H))
            if x0 >= x1 or y0 >= y1:
                continue
            win = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
            dh = np.abs(win[..., 0].astype(np.int16) - self.hues[i])
            dh = np.minimum(dh, 180 - dh)
            m = ((dh <= self.hue_tolerance) & (win[..., 1] >= self.min_saturation)
                 & (win[..., 2] >= self.min_value)).astype(np.uint8)
            n, labels, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
            if n <= 1:
                continue
            areas = stats[1:, cv2.CC_STAT_AREA]
            j = int(np.argmax(areas))
            if areas[j] < self.min_area:
                continue
            z = fk_z[i] if np.isfinite(fk_z[i]) and fk_z[i] > self.marker_radius else np.nan
            r_px = focal * self.marker_radius / np.sqrt(z * z - self.marker_radius ** 2) if np.isfinite(z) else np.nan
            c = cents[1 + j] + (x0, y0)
            if np.isfinite(r_px):
                # the blob is part of the marker's projected disc (radius r_px) around the tip:
                # move the FK prediction into the set of centres consistent with every blob
                # pixel (a partly hidden marker biases a plain centroid)
                hull = cv2.convexHull(np.argwhere(labels == 1 + j)[:, ::-1].astype(np.float32)).reshape(-1, 2) + (x0, y0)
                c = np.array([cu, cv], dtype=np.float64)
                for _it in range(30):
                    dv = hull - c
                    dist = np.hypot(dv[:, 0], dv[:, 1])
                    far = int(np.argmax(dist))
                    if dist[far] <= r_px:
                        break
                    c = c + (dist[far] - r_px) * dv[far] / dist[far]
            uv[i] = c
            expected = np.pi * r_px ** 2 if np.isfinite(r_px) else areas[j]
            conf[i] = float(min(1.0, areas[j] / max(expected, 1.0)))
        return FingertipResult(uv, conf, np.asarray(fk_uv, dtype=np.float64))


# ----------------------------------------------------------------------------- combination

def parse_combination(spec: str) -> tuple[list, str]:
    """``"color"``, ``"depth"``, ``"color+depth"`` (intersection), ``"color|depth"`` (union),
    ``"external"``, ``"detectron2"`` ... -> (backend names, operator ``"+"``, ``"|"`` or ``""``)."""
    s = spec.replace(" ", "")
    op = "+" if "+" in s else "|" if "|" in s else ""
    if "+" in s and "|" in s:
        raise ValueError(f"object backend {spec!r}: mix of '+' and '|' is not supported")
    names = s.split(op) if op else [s]
    bad = [n for n in names if n not in OBJECT_BACKENDS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"object backend {spec!r}: use one of {list(OBJECT_BACKENDS)} "
                         "or two joined by '+' (intersection) or '|' (union)")
    return names, op


@dataclass
class SegmenterConfig:
    """Settings of :class:`Segmenter` (the node's parameters of the same names)."""

    object_backend: str = "color|depth"
    color_model: str = "hsv"                 # hsv | histogram (learned from the first confident mask)
    #                                          | object (histogram from the object model's texture/colours)
    object_size: float = 0.0                 # m, expected 3D extent of the object component (0 = no
    #                                          check; < 0 = the object model's diameter)
    object_size_tolerance: float = 2.0       # components more than this factor off that size are rejected
    hsv_ranges: Sequence[float] = (0, 120, 70, 10, 255, 255, 170, 120, 70, 180, 255, 255)
    histogram_threshold: float = 0.5
    histogram_rate: float = 0.05
    histogram_learn_confidence: float = 0.7
    workspace_box: Sequence[float] = (-0.05, -0.12, 0.0, 0.20, 0.12, 0.25)
    workspace_frame: str = "hand"            # hand | camera
    color_in_workspace: bool = True          # colour search limited to the projected workspace box
    hand_dilate_px: int = 0
    hand_depth_tolerance: float = 0.02       # measured depth this far behind the hand = background
    hand_occluder_tolerance: float = 0.006   # this far in front of the hand = occluder (the object)
    hand_align_iterations: int = 2           # ICP steps per frame correcting camera->hand (0 = off)
    hand_depth_scale: float = 0.5            # resolution factor of the hand depth raster
    hand_margin_px: int = 2                  # extra ring around the visible hand removed from the object
    min_area: int = 100
    open_px: int = 1
    close_px: int = 2
    fill_holes: bool = True
    keep: str = "largest"
    marker_colors: Sequence[float] = ()      # 12 numbers (4 RGB) or empty = no marker detection
    marker_hue_tolerance: int = 10
    marker_min_saturation: int = 100
    marker_min_value: int = 60
    marker_window_px: int = 40
    marker_radius: float = 0.0144           # synthetic default (fingertip size); set for your markers
    # model backend: the object model at a pose prior (the tracker's estimate), refined against depth
    model_margin: float = 0.02               # m, search margin around the prior (>= 3 x prior_pos_sigma is used)
    model_max_margin: float = 0.04           # m, largest search margin (bounds the signed-distance grid)
    model_tolerance: float = 0.006           # m, depth within this of the refined model's surface = object
    model_icp_iterations: int = 8            # robust ICP steps per frame (0 = coarse search only)
    model_scale: float = 0.5                 # working resolution of the fit and the rendered silhouette
    model_dilate_px: int = 2                 # silhouette growth absorbing the remaining pose error


@dataclass
class SegmentationResult:
    """One frame: masks ``(H, W)`` bool, confidences, observation and fingertips."""

    hand_mask: np.ndarray
    object_mask: np.ndarray
    hand_confidence: float
    object_confidence: float
    observation: ObjectObservation
    fingertips: Optional[FingertipResult]
    raw: dict = field(default_factory=dict)  # per-backend masks before combination (debugging)
    T_cam_hand: Optional[np.ndarray] = None  # camera->hand used (after depth alignment)


class Segmenter:
    """Per-frame segmentation for one camera (``K``, ``width`` x ``height``) and one hand."""

    def __init__(self, K, width: int, height: int, hand=None, config: Optional[SegmenterConfig] = None,
                 detectron2: Optional[Detectron2Backend] = None, object_model=None):
        self.K = _check_K(K)
        self.width, self.height = int(width), int(height)
        self.cfg = cfg = config or SegmenterConfig()
        self.backends, self.op = parse_combination(cfg.object_backend)
        if cfg.color_model not in ("hsv", "histogram", "object"):
            raise ValueError(f"color_model must be 'hsv', 'histogram' or 'object', got {cfg.color_model!r}")
        if (cfg.color_model == "object" or cfg.object_size < 0) and object_model is None:
            raise ValueError("color_model='object' and object_size < 0 need the object model (object_model=...)")
        self.object_size = float(object_model.diameter) if cfg.object_size < 0 else float(cfg.object_size)
        if not cfg.object_size_tolerance >= 1:
            raise ValueError(f"object_size_tolerance must be >= 1, got {cfg.object_size_tolerance}")
        if cfg.keep not in ("largest", "near_prior"):
            raise ValueError(f"keep must be 'largest' or 'near_prior', got {cfg.keep!r}")
        self.hsv_model = HSVColorModel(cfg.hsv_ranges) if len(cfg.hsv_ranges) else None
        self.hist_model = HistogramColorModel(threshold=cfg.histogram_threshold, rate=cfg.histogram_rate) \
            if cfg.color_model == "histogram" else None
        if cfg.color_model == "object":  # model-derived; the first frame becomes its background
            self.hist_model = HistogramColorModel.from_object_model(
                object_model, threshold=cfg.histogram_threshold, rate=cfg.histogram_rate)
        if "color" in self.backends and self.hsv_model is None and self.hist_model is None:
            raise ValueError("the color backend needs hsv_ranges or color_model=histogram")
        self.box = DepthBoxForeground(self.K, width, height, cfg.workspace_box, cfg.workspace_frame)
        self.hand_masker = HandMasker(hand, self.K, width, height, depth_scale=cfg.hand_depth_scale,
                                      marker_radius=cfg.marker_radius
                                      if len(cfg.marker_colors) else 0.0) if hand is not None else None
        mr = cfg.marker_radius if len(cfg.marker_colors) else 0.0
        self.aligner = HandAligner(hand, self.K, width, height, cfg.hand_align_iterations, marker_radius=mr) \
            if hand is not None and cfg.hand_align_iterations > 0 else None
        self._last_render = None
        self.markers = None
        if len(cfg.marker_colors):
            self.markers = FingertipMarkerDetector(
                np.asarray(cfg.marker_colors, dtype=np.float64).reshape(-1, 3), cfg.marker_hue_tolerance,
                cfg.marker_min_saturation, cfg.marker_min_value, cfg.marker_window_px, cfg.marker_radius)
        if "detectron2" in self.backends and detectron2 is None:
            raise ValueError("object backend detectron2 selected but no Detectron2Backend given")
        self.detectron2 = detectron2
        _check_model_settings(cfg.model_margin, cfg.model_tolerance, cfg.model_max_margin, cfg.model_icp_iterations,
                              cfg.model_scale, cfg.model_dilate_px)
        self.model_masker = None
        if "model" in self.backends:
            if object_model is None:
                raise ValueError("object backend 'model' needs the object model (object_model=...)")
            self.model_masker = ModelObjectMasker(
                object_model, self.K, width, height, margin=cfg.model_margin, tolerance=cfg.model_tolerance,
                iterations=int(cfg.model_icp_iterations), scale=cfg.model_scale, dilate_px=int(cfg.model_dilate_px),
                max_margin=cfg.model_max_margin)

    # ------------------------------------------------------------------ pieces
    def _color_mask(self, hsv: np.ndarray) -> Optional[np.ndarray]:
        if self.hist_model is not None and self.hist_model.ready:
            return self.hist_model.mask(hsv)
        if self.hsv_model is not None:
            return self.hsv_model.mask(hsv)
        return None  # histogram not learned yet and no HSV bootstrap

    def _object_rect(self, T_cam_hand, model_rect: Optional[tuple] = None) -> tuple[int, int, int, int]:
        """Image rectangle the object masks can live in: the projected workspace box when every
        backend is bounded by it (depth; colour with ``color_in_workspace``), else the image;
        joined with the model backend's rectangle ``model_rect`` (None: no model mask)."""
        cfg = self.cfg
        others = [b for b in self.backends if b != "model"]
        rect = None
        if others:
            bounded = all(b == "depth" or (b == "color" and cfg.color_in_workspace) for b in others)
            if bounded and (cfg.workspace_frame == "camera" or T_cam_hand is not None):
                rect = self.box.project_box(T_cam_hand) or (0, 0, 0, 0)
            else:
                rect = (0, 0, self.width, self.height)
        if model_rect is not None:
            if rect is None or rect[0] >= rect[2] or rect[1] >= rect[3]:
                return tuple(model_rect)
            return (min(rect[0], model_rect[0]), min(rect[1], model_rect[1]), max(rect[2], model_rect[2]),
                    max(rect[3], model_rect[3]))
        return rect or (0, 0, 0, 0)

    def segment(self, rgb: np.ndarray, depth_m: Optional[np.ndarray] = None, q: Optional[np.ndarray] = None,
                T_cam_hand: Optional[np.ndarray] = None, external_mask: Optional[np.ndarray] = None, *,
                T_cam_obj_prior: Optional[np.ndarray] = None,
                prior_pos_sigma: Optional[float] = None) -> SegmentationResult:
        """Segment one frame.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB (see :func:`to_rgb`).
            depth_m: ``(H, W)`` float32 metres aligned to ``rgb`` (0 = invalid) or None.
            q: ``(J,)`` joint angles in the hand model's order, and ``T_cam_hand`` ``(4, 4)``;
                without them there is no hand mask (and a hand-frame box cannot be used).
            external_mask: ``(H, W)`` mask from another detector (``external`` backend).
            T_cam_obj_prior: ``(4, 4)`` camera->object pose prior (``model`` backend: the tracker's
                current estimate or the initial pose); without it, or without depth, the model
                backend gives no mask this frame (confidence halved like any missing input).
            prior_pos_sigma: the prior's position uncertainty (m, e.g. the square root of the
                largest position variance of the tracker's covariance); widens the model search
                margin to ``3 sigma`` (between ``model_margin`` and ``model_max_margin``).

        Object work happens inside the workspace box's image rectangle (see
        :meth:`_object_rect`); ``raw`` masks in the result are that rectangle's crops
        (``raw["rect"]`` = ``(x0, y0, x1, y1)``). With the model backend ``raw["model_pose"]``
        is the prior refined against depth (``(4, 4)``, None without a fit),
        ``raw["model_confidence"]`` its depth agreement and ``raw["model_covariance"]`` its
        ``(6, 6)`` ICP covariance (:attr:`ModelFit.covariance`, None without one).
        """
        H, W = self.height, self.width
        if rgb.shape != (H, W, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be ({H}, {W}, 3) uint8, got {rgb.shape} {rgb.dtype}")
        if depth_m is not None and depth_m.shape != (H, W):
            raise ValueError(f"depth must be ({H}, {W}), got {depth_m.shape}")
        if external_mask is not None and external_mask.shape != (H, W):
            raise ValueError(f"external mask must be ({H}, {W}), got {external_mask.shape}")
        if T_cam_obj_prior is not None:
            T_cam_obj_prior = np.asarray(T_cam_obj_prior, dtype=np.float64)
            if T_cam_obj_prior.shape != (4, 4) or not np.isfinite(T_cam_obj_prior).all():
                raise ValueError(f"T_cam_obj_prior must be a finite (4, 4) pose, got {T_cam_obj_prior.shape}")
        if prior_pos_sigma is not None and not (np.isfinite(prior_pos_sigma) and prior_pos_sigma >= 0):
            raise ValueError(f"prior_pos_sigma must be a finite value >= 0 m, got {prior_pos_sigma}")
        cfg = self.cfg
        # 1. hand: align the camera->hand transform to depth, render, keep what depth confirms
        render = None
        hand_mask, hand_conf = np.zeros((H, W), bool), 0.0
        if self.hand_masker is not None and q is not None and T_cam_hand is not None:
            if depth_m is not None and self.aligner is not None:
                # self-occlusion from the previous frame's render (the hand moves little per frame)
                vis = self._last_render or self.hand_masker.render(q, self.aligner.correction @ T_cam_hand)
                T_cam_hand = self.aligner.update(q, T_cam_hand, depth_m, vis)
            render = self._last_render = self.hand_masker.render(q, T_cam_hand)
            hand_mask, hand_conf = visible_hand_mask(render, cfg.hand_dilate_px, depth_m, cfg.hand_depth_tolerance,
                                                     occluder_tolerance=cfg.hand_occluder_tolerance)
        # 2. object masks inside the working rectangle
        fit = None
        if self.model_masker is not None and T_cam_obj_prior is not None and depth_m is not None:
            exclude = _grow_mask(hand_mask, render.roi if render is not None else None, cfg.hand_margin_px)
            fit = self.model_masker.fit(depth_m, T_cam_obj_prior, prior_pos_sigma or 0.0,
                                        exclude if exclude.any() else None)
        x0, y0, x1, y1 = rect = self._object_rect(T_cam_hand, None if fit is None else fit.rect)
        sl = (slice(y0, y1), slice(x0, x1))
        empty = x0 >= x1 or y0 >= y1
        raw = {"rect": rect}
        if self.model_masker is not None:
            raw["model_pose"] = None if fit is None else fit.T_cam_obj
            raw["model_confidence"] = 0.0 if fit is None else fit.confidence
            raw["model_covariance"] = None if fit is None else fit.covariance
        if fit is not None and not empty:
            mx0, my0, mx1, my1 = fit.rect
            m = np.zeros((y1 - y0, x1 - x0), bool)
            m[my0 - y0:my1 - y0, mx0 - x0:mx1 - x0] = fit.mask
            raw["model"] = m
        hsv = None
        if not empty and (("color" in self.backends) or self.hist_model is not None):
            hsv = cv2.cvtColor(np.ascontiguousarray(rgb[sl]), cv2.COLOR_RGB2HSV)
        if self.hist_model is not None and hsv is not None and self.hist_model.object_hist is not None \
                and not self.hist_model.background_set:
            # object vs the colours of the whole scene (not the working crop the object may fill)
            self.hist_model.relative_to(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
        if "color" in self.backends and hsv is not None:
            cm = self._color_mask(hsv)
            if cm is not None:
                raw["color"] = cm
        if "depth" in self.backends and depth_m is not None and not empty:
            if cfg.workspace_frame == "camera" or T_cam_hand is not None:
                raw["depth"] = self.box.mask(depth_m, T_cam_hand)[sl]
                if "color" in raw and self.op == "|":
                    # union: a colour pixel whose valid depth lies outside the workspace is
                    # background of the object's colour, not object (colour fills depth holes)
                    raw["color"] = raw["color"] & (raw["depth"] | ~(depth_m[sl] > 0))
        if "external" in self.backends and external_mask is not None:
            raw["external"] = external_mask[sl] > 0
        d2_score = None
        if "detectron2" in self.backends:
            d2, d2_score = self.detectron2.mask(rgb)
            raw["detectron2"] = d2[sl]
        hand_c = hand_mask[sl]
        hand_cut = hand_c
        if cfg.hand_margin_px > 0 and hand_c.any():
            hand_cut = cv2.dilate(hand_c.view(np.uint8), _disk(cfg.hand_margin_px)).astype(bool)
        present = [raw[b] & ~hand_cut for b in self.backends if b in raw]
        if not present:
            obj = np.zeros(hand_c.shape, bool)
        elif len(present) == 1:
            obj = present[0]
        elif self.op == "+":
            obj = present[0] & present[1]
        else:
            obj = present[0] | present[1]
        prior = None
        if render is not None:
            prior = np.nanmean(render.fingertips_uv, axis=0) - (x0, y0)
        points = None
        if self.object_size > 0 and depth_m is not None and not empty:
            d = depth_m[sl]
            points = np.stack([self.box._rx[sl] * d, self.box._ry[sl] * d, d], -1)
        clean = clean_mask(obj, cfg.min_area, cfg.open_px, cfg.close_px, cfg.fill_holes, cfg.keep, prior,
                           points=points, expected_size=self.object_size or None,
                           size_tolerance=cfg.object_size_tolerance)
        conf = clean.confidence
        if len(present) == 2:  # agreement between the two backends inside the kept region
            a, b = present[0], present[1]
            inter, union = np.count_nonzero(a & b), np.count_nonzero(a | b)
            conf *= 0.5 + 0.5 * (inter / union if union else 0.0)
        elif len(present) < len(self.backends):
            conf *= 0.5  # a configured backend had no input this frame
        if d2_score is not None:
            conf *= d2_score
        if fit is not None:
            conf *= fit.confidence
        obj_c = clean.mask
        # the object in front of the fingers is not hand
        if "color" in raw and obj_c.any():
            hand_mask[sl] &= ~(obj_c & raw["color"])
        if self.hist_model is not None and hsv is not None and conf >= cfg.histogram_learn_confidence \
                and obj_c.any() and (not self.hist_model.ready or "color" not in raw or len(present) == 2):
            # learn from a confident mask; once learned, only from masks confirmed by a second backend
            self.hist_model.learn(hsv, obj_c)
        object_mask = np.zeros((H, W), bool)
        object_mask[sl] = obj_c
        obs = object_observation(obj_c, self.K, None if depth_m is None else depth_m[sl], conf,
                                 cfg.object_backend, offset=(x0, y0))
        if not obj_c.any():
            obs.confidence = 0.0
        tips = None
        if render is not None:
            if self.markers is not None:
                tips = self.markers.detect(rgb, render.fingertips_uv, render.fingertips_z, float(self.K[0, 0]))
            else:
                tips = FingertipResult(np.full((4, 2), np.nan), np.zeros(4), render.fingertips_uv.copy())
        return SegmentationResult(hand_mask, object_mask, hand_conf if render is not None else 0.0, conf,
                                  obs, tips, raw, T_cam_hand)


# ----------------------------------------------------------------------------- overlay

def overlay(rgb: np.ndarray, hand_mask: np.ndarray, object_mask: np.ndarray,
            fingertips: Optional[FingertipResult] = None, alpha: float = 0.45) -> np.ndarray:
    """RGB overlay for RViz: hand tinted blue, object green, contours, markers (circles) and FK
    fingertips (crosses)."""
    out = rgb.copy()
    for m, col in ((hand_mask, (40, 110, 255)), (object_mask, (40, 220, 60))):
        if m.any():
            out[m] = (out[m] * (1 - alpha) + np.asarray(col) * alpha).astype(np.uint8)
            cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, cnts, -1, col, 1)
    if fingertips is not None:
        for (u, v), (fu, fv), c in zip(fingertips.uv, fingertips.fk_uv, fingertips.confidence):
            if np.isfinite(fu) and np.isfinite(fv):
                cv2.drawMarker(out, (int(round(fu)), int(round(fv))), (255, 255, 0), cv2.MARKER_CROSS, 10, 1)
            if np.isfinite(u) and np.isfinite(v):
                cv2.circle(out, (int(round(u)), int(round(v))), 5, (255, 0, 255), 1)
    return out
