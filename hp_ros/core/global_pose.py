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
    kept = []
    c = math.cos(math.radians(deg))
    for i in order:
        if not any(np.linalg.norm(T[i, :3, 3] - T[k, :3, 3]) < metres
                   and (np.trace(T[k, :3, :3].T @ T[i, :3, :3]) - 1) / 2 > c for k in kept):
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


# poses around the global estimate's best that the refinement's coarse search scores with its candidates
DEFAULT_GLOBAL_HYPOTHESES = 4
# Adam iterations of the refinement after a global estimate (at most: it stops early on convergence)
DEFAULT_GLOBAL_ITERATIONS = 8
# The refinement after a global estimate starts from its depth fit, within millimetres: Adam's steps
# are scaled by DEFAULT_GLOBAL_LR_SCALE (with the refiner's full first steps, 5 mm / 3 deg in every
# coordinate, no later iterate of 12 fitted better than the start: bench_init.py, 26 cold starts), and
# it stops after DEFAULT_GLOBAL_PATIENCE iterations without a relative improvement of
# DEFAULT_GLOBAL_REL_TOL (7 iterations on average there). A stricter stop (2 iterations without 1 %)
# ended the real HOPE frame's refinement after 3 iterations at mask IoU 0.938 (< global_min_iou 0.94:
# a second search, twice the cost); this one runs its 8 (0.957).
DEFAULT_GLOBAL_LR_SCALE = 0.2
DEFAULT_GLOBAL_PATIENCE = 3
DEFAULT_GLOBAL_REL_TOL = 1e-3


def global_refine_config(config, lr_scale: float = DEFAULT_GLOBAL_LR_SCALE, patience: int = DEFAULT_GLOBAL_PATIENCE,
                         rel_tol: float = DEFAULT_GLOBAL_REL_TOL):
    """The :class:`hp_ros.core.refine.RefineConfig` of the refinement after a global estimate, from the
    refiner's ``config``: Adam's steps scaled by ``lr_scale``; early stopping after ``patience``
    iterations without a relative improvement of ``rel_tol`` (``patience`` 0: the refiner's); the
    coarse search's best candidates only scored at the RoI's resolution, without Adam iterations each
    (their starts are depth fits already)."""
    from dataclasses import replace

    out = replace(config, lr_translation=config.lr_translation * lr_scale, lr_rotation=config.lr_rotation * lr_scale,
                  top_k_iterations=0)
    if patience > 0:
        out = replace(out, early_stop_patience=int(patience), early_stop_rel_tol=float(rel_tol))
    return out


@dataclass
class AnswerCheck:
    """What a refined global answer must show before it is given out (:func:`cold_start`): its mask
    IoU at the camera's resolution (a box turned a quarter about one axis covers a tenth of the mask
    wrongly: 0.88 against 0.98) and the hand's deepest point inside it (the object is between the
    fingers, not through them). A rejected answer's basin is excluded and the search run again, up to
    ``attempts`` searches in all; the answer that fits best of them is returned."""

    min_mask_iou: float = 0.94
    max_penetration_mm: float = 3.0
    attempts: int = 3

    def problem(self, res) -> Optional[str]:
        """Why the :class:`hp_ros.core.refine.RefineResult` ``res`` is rejected (its last frame), or None."""
        iou, pen = float(res.mask_iou[-1]), float(res.max_penetration_mm[-1])
        if not iou >= self.min_mask_iou:  # NaN (no mask) fails too
            return f"mask IoU {iou:.3f} < {self.min_mask_iou}"
        if pen > self.max_penetration_mm:
            return f"the hand {pen:.1f} mm inside the object (> {self.max_penetration_mm} mm)"
        return None

    @staticmethod
    def fit(res) -> float:
        """Higher is better: the mask IoU, less 1 per 10 mm of penetration."""
        iou = float(res.mask_iou[-1])
        return (iou if math.isfinite(iou) else 0.0) - 0.1 * float(res.max_penetration_mm[-1])


def cold_start(refiner, search: "GlobalPoseSearch", frame, camera,
               max_iterations: Optional[int] = DEFAULT_GLOBAL_ITERATIONS,
               num_hypotheses: int = DEFAULT_GLOBAL_HYPOTHESES, terms=None, check: Optional[AnswerCheck] = None,
               lr_scale: float = DEFAULT_GLOBAL_LR_SCALE, patience: int = DEFAULT_GLOBAL_PATIENCE):
    """Pose of one frame without an initial pose: :meth:`GlobalPoseSearch.estimate` (with the hand's
    surface points when the frame has joints and camera->hand and the refiner a hand model), then
    :meth:`hp_ros.core.refine.Refiner.refine` from its best candidate with all of its candidates in
    the coarse search (the colours decide between poses depth and mask cannot tell apart), then
    ``check`` (default :class:`AnswerCheck`): a rejected answer's basin
    (:meth:`GlobalPoseSearch.basin`) is excluded and the search run again; the best-fitting answer
    of the searches is returned, its ``GlobalPoseResult.attempts`` lists each search's problem (None:
    accepted).

    Args:
        refiner: :class:`hp_ros.core.refine.Refiner`; frame: :class:`hp_ros.core.refine.FrameObservation`
            with ``depth`` and ``object_mask``, or a window of them (oldest first: the estimate is of
            the last, the refinement of all); camera: :class:`hp_ros.core.camera.Camera`.
        max_iterations: Adam iterations of the refinement (None: the refiner's ``config.max_iterations``);
        num_hypotheses: poses around the estimate's best scored with its candidates.
        lr_scale, patience: the refinement's step scale and early-stopping patience
            (:func:`global_refine_config`).
    Returns:
        ``(RefineResult, GlobalPoseResult)``; ``(None, None)`` when the mask has too few depth pixels.
    Raises:
        ValueError when the frame has no depth or no object mask.
    """
    frames = list(frame) if isinstance(frame, (list, tuple)) else [frame]
    check = check or AnswerCheck()
    best, excluded, attempts = None, [], []
    config = global_refine_config(refiner.config, lr_scale, patience)
    for _ in range(max(1, int(check.attempts))):
        found = global_estimate(refiner, search, frames[-1], camera,
                                exclude=np.concatenate(excluded) if excluded else None)
        if found is None:
            break  # too few depth pixels, or every candidate in a rejected basin
        res = refiner.refine(frames, camera, torch.as_tensor(found.T_cam_obj, dtype=torch.float32),
                             max_iterations=max_iterations, num_hypotheses=num_hypotheses, terms=terms,
                             candidates=found.candidates, config=config)
        problem = check.problem(res)
        attempts.append(problem)
        if best is None or check.fit(res) > check.fit(best[0]):
            best = (res, found)
        if problem is None:
            break
        excluded.append(search.basin(res.T_cam_obj[-1].double().numpy()))
    if best is None:
        return None, None
    best[1].attempts = attempts
    return best


def global_estimate(refiner, search: "GlobalPoseSearch", frame, camera,
                    exclude: Optional[np.ndarray] = None) -> Optional[GlobalPoseResult]:
    """:meth:`GlobalPoseSearch.estimate` on a :class:`hp_ros.core.refine.FrameObservation` (its depth,
    masks, and the hand's surface points from its joints and camera->hand with the refiner's hand
    model; ``exclude``: rotations left out, see :meth:`GlobalPoseSearch.estimate`). None when the mask has
    too few depth pixels; ValueError without depth or object mask."""
    if frame.depth is None or frame.object_mask is None:
        raise ValueError("a global estimate needs the frame's depth and object mask")
    depth = np.asarray(frame.depth, np.float32)
    mask = np.asarray(frame.object_mask)
    mask = mask > (127 if mask.dtype == np.uint8 and mask.max() > 1 else 0)
    hand_mask = None
    if frame.hand_mask is not None:
        hm = np.asarray(frame.hand_mask)
        hand_mask = hm > (127 if hm.dtype == np.uint8 and hm.max() > 1 else 0)
    hand_points = None
    if refiner.hand is not None and frame.q is not None and frame.T_cam_hand is not None:
        with torch.no_grad():
            q = torch.as_tensor(np.asarray(frame.q), dtype=torch.float32).reshape(1, -1)
            Th = torch.as_tensor(np.asarray(frame.T_cam_hand), dtype=torch.float32).reshape(1, 4, 4)
            hand_points = refiner.hand.surface_points(q.to(refiner.device), Th.to(refiner.device))[0].cpu().numpy()
    K = camera.K.double().cpu().numpy()
    return search.estimate(depth, mask, K, hand_mask=hand_mask, hand_points=hand_points, exclude=exclude)
