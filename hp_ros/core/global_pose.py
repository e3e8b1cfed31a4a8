"""A global estimate of the object pose from one RGB-D frame, without an initial pose (ROS-free).

What a lab has when the graph starts: the object mask, the aligned depth, and the hand (joint
states, camera->hand): the object is in the grasp. :class:`GlobalPoseSearch.estimate`:

1. **Where.** The mask's pixels with depth, back-projected: their centroid ``p`` is a point of the
   visible surface.
2. **Which way round.** ``rotations`` rotations spread uniformly over SO(3) (a fixed seeded set;
   for a ``symmetric`` object - a body of revolution - a quarter as many: turns about its axis
   change nothing). For each, the object is placed so that the centroid of its camera-facing
   surface samples lands on ``p``, and its camera-facing samples are splatted (nearest depth per
   pixel, closed by a 3x3 min-filter) into a ``size x size`` grid over the mask's bounding box;
   three steps move it so that the splatted silhouette's centroid meets the mask's and its depth
   the measured depth (hand pixels left out of both).
   All rotations are scored in one batch: ``(1 - IoU)`` of the splatted silhouette with the mask
   (hand pixels count for neither: the hand may cover the object) plus the mean Geman-McClure
   depth residual on the pixels both cover, plus ``penetration_weight`` times the share of hand
   surface points deeper than 5 mm inside the object (the object is between the fingers, not
   through them).
3. **Refined.** The best ``top_k`` go through the model backend's depth fit (ICP,
   :class:`hp_ros.core.segmentation.model.ModelObjectMasker`); each result and its half turns
   about the object's principal axes (a box looks the same to depth and mask after them: the
   symmetry the geometry cannot resolve; for a ``symmetric`` object also ``spins`` turns about its
   axis, which only the colours show) are scored again. The best is returned and all distinct ones
   as ``candidates`` (best first): the caller scores them with the colours too and refines
   (:meth:`hp_ros.core.refine.Refiner.refine` ``candidates=``).
4. **Checked.** :func:`cold_start` refines and checks the answer (:class:`AnswerCheck`: mask IoU at
   the camera's resolution, the hand not inside the object). A rejected answer's basin - its
   rotation and the ones depth and mask cannot tell from it, :meth:`GlobalPoseSearch.basin` - is
   excluded (``estimate(exclude=)``) and the search run again; the best-fitting answer is returned.
   :func:`cold_start`, :func:`global_estimate`, :class:`AnswerCheck` and the ``DEFAULT_GLOBAL_*``
   refinement settings live in :mod:`hp_ros.core.cold_start` (importable from here too).

Shapes: ``N`` rotations, ``M`` model samples, ``S`` grid side, ``H x W`` camera image.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from hp_ros.core.cold_start import (DEFAULT_GLOBAL_HYPOTHESES, DEFAULT_GLOBAL_ITERATIONS, DEFAULT_GLOBAL_LR_SCALE,
                                    DEFAULT_GLOBAL_PATIENCE, DEFAULT_GLOBAL_REL_TOL, AnswerCheck, cold_start,
                                    global_estimate, global_refine_config)

__all__ = ["AnswerCheck", "DEFAULT_GLOBAL_HYPOTHESES", "DEFAULT_GLOBAL_ITERATIONS", "DEFAULT_GLOBAL_LR_SCALE",
           "DEFAULT_GLOBAL_PATIENCE", "DEFAULT_GLOBAL_REL_TOL", "global_refine_config", "GlobalPoseConfig",
           "GlobalPoseResult", "GlobalPoseSearch", "uniform_rotations", "cold_start", "global_estimate"]


@dataclass
class GlobalPoseConfig:
    rotations: int = 480          # rotations scored (a quarter for a symmetric object)
    size: int = 40                # side of the scoring grid [px]
    samples: int = 1000           # model surface samples splatted
    top_k: int = 4                # best rotations refined with the depth fit
    depth_scale: float = 0.01     # m, Geman-McClure scale of the depth residuals
    penetration_weight: float = 1.0
    min_points: int = 30          # mask pixels with depth needed
    max_hand_points: int = 200    # hand surface points of the penetration score (evenly subsampled)
    seed: int = 0
    flips: bool = True            # also the half turns about the principal axes of each candidate
    spins: int = 16               # symmetric object: turns about its axis of each candidate (colours decide)
    exclude_deg: float = 40.0     # rotations this close to an excluded basin are left out (estimate(exclude=))


@dataclass
class GlobalPoseResult:
    """T_cam_obj ``(4, 4)`` float64; score (lower is better); confidence of its depth fit;
    candidates ``(k, 4, 4)`` (the refined top-k, best first); elapsed_s."""

    T_cam_obj: np.ndarray
    score: float
    confidence: float
    candidates: np.ndarray
    elapsed_s: float
    attempts: list = field(default_factory=list)  # cold_start: each search's problem (None = accepted)


def uniform_rotations(n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, 3)`` rotations uniform over SO(3) (normalised Gaussian quaternions), fixed by ``seed``."""
    import roma

    g = torch.Generator().manual_seed(int(seed))
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    q[0] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # the identity is always one
    return roma.unitquat_to_rotmat(q)


class GlobalPoseSearch:
    """Batched rotation search + depth fit (see the module doc). ``obj``: an ObjectModel (metres)."""

    def __init__(self, obj, config: Optional[GlobalPoseConfig] = None):
        import trimesh

        self.obj = obj
        self.cfg = config or GlobalPoseConfig()
        pts, fidx = trimesh.sample.sample_surface(obj.trimesh, int(self.cfg.samples), seed=self.cfg.seed)
        self.samples = torch.as_tensor(np.asarray(pts), dtype=torch.float64)                    # (M, 3)
        self.normals = torch.as_tensor(np.asarray(obj.trimesh.face_normals)[fidx], dtype=torch.float64)
        n = self.cfg.rotations // (4 if obj.symmetric else 1)
        self.R = uniform_rotations(max(n, 1), self.cfg.seed)                                     # (N, 3, 3)
        self._rotated = None  # the searched rotations' samples and normals, built on first use (per mesh)
        self._masker = None  # (camera key, ModelObjectMasker)
        self.flips = _half_turns(obj) if self.cfg.flips else [np.eye(4)]
        if obj.symmetric and self.cfg.spins > 1:  # the spin about the axis: only the colours show it
            self.flips = [f @ s for f in self.flips for s in _spins(obj, int(self.cfg.spins))]

    def basin(self, T_cam_obj: np.ndarray) -> np.ndarray:
        """Rotations ``(F, 3, 3)`` that depth and mask cannot tell from ``T_cam_obj`` ``(4, 4)``'s (its
        half turns about the principal axes, and for a symmetric object its turns about the axis):
        what :meth:`estimate` ``exclude=`` leaves out when an answer was rejected."""
        T = np.asarray(T_cam_obj, np.float64)
        return np.stack([(T @ f)[:3, :3] for f in self.flips])

    def _masker_for(self, K: np.ndarray, W: int, H: int):
        from hp_ros.core.segmentation.model import ModelObjectMasker

        key = (tuple(np.round(K, 6).reshape(-1)), W, H)
        if self._masker is None or self._masker[0] != key:
            self._masker = (key, ModelObjectMasker(self.obj, K, W, H))
        return self._masker[1]

    def estimate(self, depth: np.ndarray, mask: np.ndarray, K: np.ndarray, hand_mask: Optional[np.ndarray] = None,
                 hand_points: Optional[np.ndarray] = None, exclude: Optional[np.ndarray] = None) -> Optional[GlobalPoseResult]:
        """A pose from ``depth`` ``(H, W)`` [m, 0 = none], the object ``mask`` ``(H, W)`` bool, intrinsics
        ``K`` ``(3, 3)``, optionally the observed ``hand_mask`` ``(H, W)`` bool and hand surface points
        ``(P, 3)`` in the camera frame. ``exclude``: rotations ``(E, 3, 3)`` (camera frame, e.g.
        :meth:`basin` of rejected answers): rotations within ``exclude_deg`` of one are neither
        searched nor returned. None when the mask has fewer than ``min_points`` depth pixels, or when
        every candidate is excluded."""
        t0 = time.perf_counter()
        cfg = self.cfg
        K = np.asarray(K, np.float64)
        H, W = mask.shape
        depth = np.where(np.isfinite(depth), depth, 0.0)
        ys, xs = np.nonzero(mask & (depth > 0))
        if len(xs) < cfg.min_points:
            return None
        z = depth[ys, xs]
        keep = np.abs(z - np.median(z)) < 0.15  # stray pixels (mask edges on the background)
        xs, ys, z = xs[keep], ys[keep], z[keep]
        P = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], 1)
        p_bar = torch.as_tensor(P.mean(0))
        grid = _Grid(mask, depth, hand_mask, K, cfg.size)
        rot = self._search_rotated()
        T = self._align(self._placed(p_bar, rot), grid, rot)                                     # (N, 4, 4)
        masker = self._masker_for(K, W, H)  # also the signed distance of the penetration score
        score = self._score(T, grid, hand_points, rot)
        if exclude is not None and len(exclude):
            score = torch.where(self._excluded(T, exclude), torch.full_like(score, math.inf), score)
        best = [i for i in torch.argsort(score)[: cfg.top_k].tolist() if math.isfinite(float(score[i]))]
        d_obj = np.where(mask | (hand_mask if hand_mask is not None else False), depth, 0.0).astype(np.float32)
        cands, confs = [], []
        for i in best:
            fit = masker.fit(d_obj, T[i].numpy(), 0.013, exclude=hand_mask)
            if fit is not None and np.isfinite(fit.T_cam_obj).all():
                cands.append(fit.T_cam_obj)
                confs.append(fit.confidence)
        if not cands:
            return None
        cands = [c @ f for c in cands for f in self.flips]
        confs = [c for c in confs for _ in self.flips]
        if exclude is not None and len(exclude):  # the depth fit can slide back into an excluded basin
            out = self._excluded(torch.as_tensor(np.stack(cands)), exclude).tolist()
            cands, confs = [c for c, o in zip(cands, out) if not o], [c for c, o in zip(confs, out) if not o]
            if not cands:
                return None
        Tc = torch.as_tensor(np.stack(cands))
        s2 = self._score(Tc, grid, hand_points) - 0.5 * torch.as_tensor(confs)
        order = _distinct(np.stack(cands), torch.argsort(s2).tolist())
        j = order[0]
        return GlobalPoseResult(np.asarray(cands[j]), float(s2[j]), float(confs[j]),
                                np.stack([cands[k] for k in order]), time.perf_counter() - t0)

    def _excluded(self, T: torch.Tensor, exclude) -> torch.Tensor:
        """``(N,)`` bool: the rotations of poses ``T`` ``(N, 4, 4)`` within ``exclude_deg`` of one of
        ``exclude`` ``(E, 3, 3)``."""
        E = torch.as_tensor(np.asarray(exclude, np.float64)).reshape(-1, 3, 3)
        cos = (torch.einsum("nij,eij->ne", T[:, :3, :3].double(), E) - 1.0) / 2.0   # trace(R_e^T R_n)
        return (cos > math.cos(math.radians(self.cfg.exclude_deg))).any(1)

    def _search_rotated(self):
        """``(R s, R n, (R n) . (R s))`` float32 ``(N, M, 3)``, ``(N, M, 3)``, ``(N, M)``: the model
        samples and normals turned by each searched rotation, computed once per mesh (every request
        and every alignment step splats the same rotations; only the translations change)."""
        if self._rotated is None:
            Rf = self.R.float()
            s_rot = torch.einsum("nij,mj->nmi", Rf, self.samples.float()).contiguous()
            n_rot = torch.einsum("nij,mj->nmi", Rf, self.normals.float()).contiguous()
            self._rotated = (s_rot, n_rot, (n_rot * s_rot).sum(-1))
        return self._rotated

    def _placed(self, p_bar: torch.Tensor, rot) -> torch.Tensor:
        """Poses ``(N, 4, 4)``: each rotation with its camera-facing samples' centroid on ``p_bar``
        (``rot``: :meth:`_search_rotated`)."""
        view = (p_bar / p_bar.norm()).float()
        s_cam, n_cam = rot[0], rot[1]                                                            # (N, M, 3)
        facing = ((n_cam @ view) < 0).float()                                                    # (N, M)
        c_vis = ((s_cam * facing[..., None]).sum(1) / facing.sum(1, keepdim=True).clamp(min=1)).double()  # (N, 3)
        T = torch.eye(4, dtype=torch.float64).repeat(self.R.shape[0], 1, 1)
        T[:, :3, :3] = self.R
        T[:, :3, 3] = p_bar - c_vis
        return T

    def _align(self, T: torch.Tensor, grid: "_Grid", rot=None, steps: int = 3) -> torch.Tensor:
        """Poses ``(N, 4, 4)`` moved so that their splatted silhouettes' centroids meet the mask's and
        their depth meets the measured depth (``steps`` fixed-point steps, hand pixels left out):
        the visible-centroid placement is off by centimetres when the hand hides part of the object.
        ``rot``: :meth:`_search_rotated` when ``T`` has the searched rotations."""
        T = T.clone()
        care = (~grid.hand)[None]
        obs = grid.mask[None] & care
        S = self.cfg.size
        idx = torch.arange(S, dtype=torch.float32)
        depth = grid.depth.float()[None]
        n_obs = obs.flatten(1).sum(1).clamp(min=1)
        u_obs = (obs * idx[None, None, :]).flatten(1).sum(1) / n_obs
        v_obs = (obs * idx[None, :, None]).flatten(1).sum(1) / n_obs
        for _ in range(steps):
            zbuf = self._splat(T, grid, close=False, rot=rot)
            sil = torch.isfinite(zbuf) & care
            n = sil.flatten(1).sum(1).clamp(min=1)
            silf = sil.float()
            du = (u_obs - (silf.sum(1) @ idx) / n).double()    # column sums x column index
            dv = (v_obs - (silf.sum(2) @ idx) / n).double()
            both = sil & grid.mask[None] & (depth > 0)
            r = torch.where(both, (depth - zbuf).clamp(-0.05, 0.05), torch.zeros_like(zbuf))
            dz = (r.flatten(1).sum(1) / both.flatten(1).sum(1).clamp(min=1)).double()
            z = T[:, 2, 3] + dz
            T[:, 0, 3] += du * z / grid.K[0, 0]
            T[:, 1, 3] += dv * z / grid.K[1, 1]
            T[:, 2, 3] = z
        return T

    def _splat(self, T: torch.Tensor, grid: "_Grid", close: bool = True, rot=None) -> torch.Tensor:
        """Nearest depth ``(N, S, S)`` float32 of the camera-facing samples at poses ``(N, 4, 4)`` (inf:
        none); ``close``: gaps between samples closed by a 3x3 min-filter (the alignment steps do
        without). ``rot``: :meth:`_search_rotated` when ``T`` has the searched rotations."""
        S = self.cfg.size
        t = T[:, :3, 3].float()
        if rot is None:
            R = T[:, :3, :3].float()
            s_rot = torch.einsum("nij,mj->nmi", R, self.samples.float())
            nrm = torch.einsum("nij,mj->nmi", R, self.normals.float())
            ns = (nrm * s_rot).sum(-1)
        else:
            s_rot, nrm, ns = rot
        pts = s_rot + t[:, None]                                                                 # (N, M, 3)
        facing = ns + (nrm @ t[:, :, None])[..., 0] < 0                                          # n . (R s + t) < 0
        depth = pts[..., 2]
        z = depth.clamp(min=1e-3)
        u = (float(grid.K[0, 0]) * pts[..., 0] / z + float(grid.K[0, 2])).round_()
        v = (float(grid.K[1, 1]) * pts[..., 1] / z + float(grid.K[1, 2])).round_()
        ok = facing & (u >= 0) & (u < S) & (v >= 0) & (v < S) & (depth > 1e-3)
        N = T.shape[0]
        # pixel index within a pose's grid (exact in float32: < S^2), then the pose's offset, for the kept only
        pix = (v * S + u)[ok].long() + torch.arange(N).repeat_interleave(ok.sum(1)) * (S * S)
        zbuf = torch.full((N * S * S,), float("inf"))
        zbuf.scatter_reduce_(0, pix, depth[ok], reduce="amin")
        zbuf = zbuf.reshape(N, S, S)
        return -F.max_pool2d(-zbuf[:, None], 3, 1, 1)[:, 0] if close else zbuf

    def _score(self, T: torch.Tensor, grid: "_Grid", hand_points, rot=None) -> torch.Tensor:
        """Loss ``(N,)`` float64 of poses ``(N, 4, 4)`` (lower is better), see the module doc. ``rot``:
        :meth:`_search_rotated` when ``T`` has the searched rotations."""
        cfg = self.cfg
        N = T.shape[0]
        zbuf = self._splat(T, grid, rot=rot)
        sil = torch.isfinite(zbuf)
        care = ~grid.hand
        depth = grid.depth.float()
        inter = (sil & grid.mask & care).flatten(1).sum(1).double()
        union = ((sil | grid.mask) & care).flatten(1).sum(1).double()
        iou = inter / union.clamp(min=1)
        both = sil & grid.mask & (depth > 0) & care
        r = torch.where(both, zbuf - depth, torch.zeros_like(zbuf))
        r2 = r * r
        rho = ((r2 / (r2 + cfg.depth_scale ** 2)).flatten(1).sum(1) / both.flatten(1).sum(1).clamp(min=1)).double()
        loss = (1 - iou) + rho
        if hand_points is not None and len(hand_points) and cfg.penetration_weight > 0:
            masker = self._masker[1] if self._masker is not None else None
            if masker is not None:
                h = np.asarray(hand_points, np.float64)
                h = torch.as_tensor(h[:: max(1, len(h) // cfg.max_hand_points)])
                local = torch.einsum("nji,npj->npi", T[:, :3, :3], h[None] - T[:, None, :3, 3])   # R^T (h - t)
                sd = masker.signed_distance(local.reshape(-1, 3).numpy()).reshape(N, -1)
                loss = loss + cfg.penetration_weight * torch.as_tensor((sd < -0.005).mean(1))
        return loss


class _Grid:
    """The frame's mask, depth and hand mask resampled (nearest) into an ``S x S`` grid over the mask's
    bounding box grown by 40 %; ``K`` ``(3, 3)`` of that grid."""

    def __init__(self, mask, depth, hand, K, S: int):
        ys, xs = np.nonzero(mask)
        cx, cy = 0.5 * (xs.min() + xs.max()), 0.5 * (ys.min() + ys.max())
        side = 1.4 * max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, 8)
        scale = S / side
        left, top = cx - 0.5 * side, cy - 0.5 * side
        g = (np.arange(S) + 0.5) / scale   # grid pixel centres, camera coordinates minus left/top
        gx = np.clip(np.rint(left + g), 0, mask.shape[1] - 1).astype(int)
        gy = np.clip(np.rint(top + g), 0, mask.shape[0] - 1).astype(int)
        inside = ((left + g >= -0.5) & (left + g <= mask.shape[1] - 0.5))[None, :] \
            & ((top + g >= -0.5) & (top + g <= mask.shape[0] - 0.5))[:, None]
        self.mask = torch.as_tensor(mask[np.ix_(gy, gx)] & inside)
        self.depth = torch.as_tensor(np.where(inside, depth[np.ix_(gy, gx)], 0.0).astype(np.float64))
        self.hand = torch.as_tensor(hand[np.ix_(gy, gx)] & inside) if hand is not None \
            else torch.zeros(S, S, dtype=torch.bool)
        Kg = np.asarray(K, np.float64).copy()
        Kg[0, :] *= scale
        Kg[1, :] *= scale
        Kg[0, 2] = scale * (K[0, 2] - left) - 0.5
        Kg[1, 2] = scale * (K[1, 2] - top) - 0.5
        self.K = torch.as_tensor(Kg)


def _half_turns(obj) -> list:
    """``(4, 4)`` object-frame transforms: the identity and half turns about the three principal axes
    through the bounding-box centre. A box (or any shape with those symmetries) looks the same to
    depth and mask after them; the caller's scoring with colours decides between them."""
    v = obj.vertices.detach().double().cpu().numpy()
    c = 0.5 * (v.min(0) + v.max(0))
    _, _, Vt = np.linalg.svd(v - v.mean(0), full_matrices=False)
    out = [np.eye(4)]
    for a in Vt:
        R = 2.0 * np.outer(a, a) - np.eye(3)   # rotation by pi about the axis a
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, c - R @ c
        out.append(T)
    return out


def _distinct(T: np.ndarray, order: list, deg: float = 2.0, metres: float = 0.003) -> list:
    """``order`` (indices into poses ``T`` ``(N, 4, 4)``) without the poses within ``deg`` and ``metres``
    of an earlier one (the depth fits of several rotations often end in the same pose)."""
    T = np.asarray(T, np.float64)
    c = math.cos(math.radians(deg))
    R, t = T[:, :3, :3], T[:, :3, 3]
    kept = []
    for i in order:  # against all kept at once: a symmetric object has hundreds of candidates (spins x flips)
        if kept:
            near = np.linalg.norm(t[kept] - t[i], axis=1) < metres
            same_turn = (np.einsum("kab,ab->k", R[kept], R[i]) - 1) / 2 > c   # trace(R_k^T R_i) = sum(R_k * R_i)
            if np.any(near & same_turn):
                continue
        kept.append(i)
    return kept


def _spins(obj, n: int) -> list:
    """``n`` ``(4, 4)`` object-frame turns about the symmetry axis of a body of revolution (the
    principal axis whose moment differs most from the other two, through the bounding-box centre)."""
    v = obj.vertices.detach().double().cpu().numpy()
    c = 0.5 * (v.min(0) + v.max(0))
    _, sv, Vt = np.linalg.svd(v - v.mean(0), full_matrices=False)
    gaps = [abs(sv[i] - sv[[j for j in range(3) if j != i]]).min() for i in range(3)]
    a = Vt[int(np.argmax(gaps))]
    out = []
    for k in range(n):
        ang = 2 * math.pi * k / n
        A = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
        R = np.eye(3) + math.sin(ang) * A + (1 - math.cos(ang)) * A @ A
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, c - R @ c
        out.append(T)
    return out
