"""Optimisation-based refinement of the object pose with rendering and physics priors (ROS-free).

HandyPriors' accurate half: Adam over the object pose (a 6-vector ``xi = (v, w)`` per frame,
applied with :func:`hp_ros.core.se3.apply_delta`), optionally also over a camera->hand
correction (one 6-vector shared by the window, applied to ``T_cam_hand``) and per-joint offsets
(``(J,)`` shared by the window), for one frame or jointly over a window of consecutive frames.

Loss: the terms of the registry :data:`hp_ros.core.priors.PRIORS` (one entry each: function, default
weight, the data it needs, its ``terms=`` name), weighted by :class:`hp_ros.core.priors.Weights`
(0 disables a term):

* rendering (:mod:`hp_ros.core.losses`): L2 between the rendered soft masks (hand, object, with
  mutual occlusion) and the observed masks, and L2 between the rendered object colours and the
  observed RGB inside the observed object mask. Everything is rendered in a square RoI around the
  object (``RefineConfig.roi_size``, default 96x96 pixels) so the cost does not grow with the
  camera resolution. A hand that is not optimised is pre-rendered once into a depth map that
  occludes the object (``static_hand_occluder``), so only the object is rendered per iteration.
  The rendered colours get a per-frame, per-channel gain fitted in closed form (``rgb_gain``)
  so that scene lighting does not bias the pose.
* physics (:mod:`hp_ros.core.physics`): penetration of hand surface points into the object SDF,
  contact sliding, object smoothness and oscillation over the window, plus Gaussian priors on the
  hand corrections.

Optimisation: Adam (beta1 0.5, cosine step decay) with rendering terms only, then all terms for
the last ``physics_fraction`` of the iterations at a smaller step, then a few Gauss-Newton steps
along the contact normals while a hand point is deeper than ``penetration_tolerance`` (Adam alone
drifts tangentially on the penetration term). The best iterate (lowest loss) is returned; early
stopping after ``early_stop_patience`` iterations without relative improvement.

Robustness to poor initialisation: before Adam, ``num_hypotheses`` poses around the initial one
(random rotations/translations, plus one that moves the projected object centre onto the observed
mask centroid) are scored by the rendering loss at low resolution in one batch without
gradients; the best ``top_k`` are refined for a few iterations and the one with the lowest loss
continues (see :meth:`Refiner.refine`).

Term names accepted by ``terms=`` (and the ``RefinePose`` service): the registry's
(:func:`hp_ros.core.priors.term_names`; ``TERM_NAMES`` here): ``mask``, ``rgb``, ``depth``,
``penetration``, ``sliding``, ``smoothness``, ``oscillation``.

Shapes: ``B`` frames of the window (oldest first), ``J`` joints, ``S`` RoI side.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from hp_ros.core import se3
from hp_ros.core.camera import Camera, RoI
from hp_ros.core.physics import contact_count, max_penetration_depth
from hp_ros.core.priors import CorrectionInputs, ImageInputs, Weights, physics_terms, term_names
from hp_ros.core.refine_depth import depth_tensor as _depth_tensor, full_resolution_iou, render_mesh
from hp_ros.core.render import Texture, render
from hp_ros.core.sdf import MeshSDF, signed_distance_world

__all__ = ["TERM_NAMES", "Weights", "RefineWeights", "RefineConfig", "FrameObservation", "RefineResult", "Refiner",
           "perturb_pose"]

# the one weight type (the registry's terms): RefineWeights is its name from before the registry
RefineWeights = Weights


def __getattr__(name):
    if name == "TERM_NAMES":  # derived from the registry when asked (a prior registered later is in it)
        return term_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class RefineConfig:
    """Optimisation settings (lengths in metres, angles in radians)."""

    max_iterations: int = 30
    roi_size: int = 96                 # RoI side S (pixels) of the main optimisation
    roi_margin: float = 0.25           # RoI margin, fraction of the object's projected size
    band: float = 2.0                  # soft silhouette half-width (RoI pixels)
    lr_translation: float = 5.0e-3     # Adam step (m) at the start; cosine decay to lr_final_ratio
    lr_rotation: float = 5.0e-2        # Adam step (rad)
    lr_final_ratio: float = 0.05
    lr_hand_translation: float = 1.0e-3
    lr_hand_rotation: float = 5.0e-3
    lr_joint: float = 5.0e-3
    early_stop_patience: int = 10      # stop after this many iterations without relative improvement (0: never)
    early_stop_rel_tol: float = 1.0e-3
    optimize_camera_hand: bool = False
    optimize_joint_offsets: bool = False
    # coarse search before Adam (robustness to a poor initial pose); 0 or 1 disables it
    num_hypotheses: int = 8
    hypothesis_rotation: float = math.radians(25.0)
    hypothesis_translation: float = 0.03
    coarse_size: int = 40              # RoI side used to score hypotheses
    top_k: int = 2                     # hypotheses refined briefly before choosing one
    top_k_iterations: int = 8          # their Adam iterations (0: only scored at roi_size, the best continues)
    # plain gradient-descent steps on the penetration term at the end (Adam drifts tangentially)
    penetration_gd_steps: int = 5
    penetration_tolerance: float = 0.0015  # m: GD steps only while deeper than this
    physics_fraction: float = 0.4      # last part of the iterations with the physics terms on
    physics_lr_scale: float = 0.3      # Adam step scale in that stage (starts near the solution)
    static_hand_occluder: bool = True  # hand not optimised: pre-render it once as an occluding depth map
    rgb_gain: bool = True              # fit a per-channel colour gain (lighting) in closed form
    adam_beta1: float = 0.5            # lower than torch's 0.9: less overshoot in short runs
    curvature: bool = False            # estimate the loss curvature (12 extra gradient evaluations)
    seed: int = 0
    # depth (hp_ros.core.refine_depth): Geman-McClure scale of the depth residuals, and a start from
    # the model backend's depth fit (ICP, hp_ros.core.segmentation.model) when the frame has depth
    depth_scale: float = 0.01          # m
    depth_fit: bool = True
    depth_fit_sigma: float = 0.013     # m: prior position std. dev. given to the depth fit (its search margin 3x)
    depth_fit_min_confidence: float = 0.3
    depth_fit_max_rot_sigma: float = 0.05  # rad: rotation directions the depth fit constrains less are kept
    face_budget: int = 3000            # faces rendered (quadric decimation above; <= 0: the full mesh)

    def __post_init__(self):
        if self.max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, got {self.max_iterations}")
        for name in ("roi_size", "coarse_size"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be >= 8 pixels, got {getattr(self, name)}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        for name in ("lr_translation", "lr_rotation", "band"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class FrameObservation:
    """One observed frame. Images are camera-sized ``H x W`` (numpy or torch).

    Attributes:
        rgb: ``(H, W, 3)`` uint8 (0-255) or float in [0, 1]; None disables the RGB term.
        object_mask: ``(H, W)`` bool/0-1/0-255 mask; None disables the object mask (and RGB) terms.
        hand_mask: ``(H, W)`` or None.
        depth: ``(H, W)`` float depth [m] aligned with the image (0 or NaN = no depth), or None
            (no depth term, no depth-fit start).
        q: ``(J,)`` joint angles (model order) or None (no hand).
        T_cam_hand: ``(4, 4)`` hand base pose in the camera frame, or None (no hand).
        stamp_ns: frame time stamp (informational).
    """

    rgb: Optional[object] = None
    object_mask: Optional[object] = None
    hand_mask: Optional[object] = None
    depth: Optional[object] = None
    q: Optional[object] = None
    T_cam_hand: Optional[object] = None
    stamp_ns: int = 0


@dataclass
class RefineResult:
    """Refinement output (all tensors detached, float32).

    Attributes:
        T_cam_obj: ``(B, 4, 4)`` refined object poses; T_cam_obj_init: ``(B, 4, 4)`` the given ones.
        T_cam_hand: ``(B, 4, 4)`` hand base poses after the (optional) correction, or None.
        joint_offsets: ``(J,)`` or None.
        history: per-iteration values, keys ``total`` and the unweighted terms.
        initial_loss, final_loss: total loss before / after (same resolution and weights).
        final_terms: unweighted terms at the final pose.
        mask_iou: ``(B,)`` IoU of the rendered (hard) object mask vs the observed one at the camera's
            resolution (NaN without an observed mask); mask_iou_roi: the same in the RoI.
        max_penetration_mm: ``(B,)``; contact_count: ``(B,)`` hand points within 1 mm (0 without hand).
        iterations: Adam iterations of the main stage; elapsed_s: wall time of :meth:`Refiner.refine`.
        hypotheses: number of poses scored by the coarse search (0 = no search); chosen_hypothesis.
        hessian_diag: ``(6,)`` diagonal curvature of the loss w.r.t. the last frame's pose delta
            (central differences of the gradient) when ``config.curvature``; else None.
    """

    T_cam_obj: torch.Tensor
    T_cam_obj_init: torch.Tensor
    T_cam_hand: Optional[torch.Tensor]
    joint_offsets: Optional[torch.Tensor]
    history: Dict[str, List[float]]
    initial_loss: float
    final_loss: float
    final_terms: Dict[str, float]
    mask_iou: np.ndarray
    max_penetration_mm: np.ndarray
    contact_count: np.ndarray
    iterations: int
    elapsed_s: float
    hypotheses: int = 0
    chosen_hypothesis: int = 0
    hessian_diag: Optional[np.ndarray] = None
    mask_iou_roi: Optional[np.ndarray] = None
    depth_fit_confidence: float = float("nan")   # of the ICP start (NaN: none)


def perturb_pose(T: torch.Tensor, translation: float, rotation: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Poses ``(..., 4, 4)`` moved by exactly ``translation`` m and rotated by exactly ``rotation``
    rad (about the object's origin), in random directions (``apply_delta`` convention)."""
    lead = T.shape[:-2]
    d = torch.randn(*lead, 6, generator=generator, dtype=torch.float64)
    v = d[..., :3] / d[..., :3].norm(dim=-1, keepdim=True) * translation
    w = d[..., 3:] / d[..., 3:].norm(dim=-1, keepdim=True) * rotation
    return se3.apply_delta(T.to(torch.float64), torch.cat([v, w], -1)).to(T.dtype)


def _image_tensor(x, name: str, H: int, W: int) -> torch.Tensor:
    """Camera image/mask -> float tensor ``(C, H, W)`` in [0, 1]."""
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.dim() == 2:
        t = t[None]
    elif t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[:2] == (H, W):
        t = t.permute(2, 0, 1)
    if t.dim() != 3 or t.shape[-2:] != (H, W):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({H}, {W}[, C]) to match the camera")
    if t.dtype == torch.bool:
        return t.float()
    if not t.is_floating_point():
        scale = 255.0 if t.dtype == torch.uint8 or int(t.max()) > 1 else 1.0
        return t.float() / scale
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t / 255.0 if float(t.max()) > 1.5 else t


class Refiner:
    """Refines object poses given a hand model (optional), an object model and observations.

    Args:
        obj: :class:`hp_ros.core.objects.ObjectModel`.
        hand: :class:`hp_ros.core.hand.HandModel` or None (rendering terms for the object only).
        config: :class:`RefineConfig`; weights: default :class:`hp_ros.core.priors.Weights`.
        device: torch device of the optimisation (``cpu`` or ``cuda:N``; Warp's SDF on the same
            one); the hand model is moved to it. Results come back on the CPU.
    """

    def __init__(self, obj, hand=None, config: Optional[RefineConfig] = None,
                 weights: Optional[Weights] = None, device="cpu"):
        self.device = torch.device(device)
        self.obj = obj
        self.hand = hand if hand is None or self.device.type == "cpu" else hand.to(self.device)
        self.config = config or RefineConfig()
        self.weights = Weights() if weights is None else weights
        # rendered: the mesh simplified to the face budget; the SDF (physics) uses the full mesh
        verts, faces, colors, simplified = render_mesh(obj, self.config.face_budget)
        self.verts, self.faces = verts.to(self.device), faces.to(self.device)
        self.full_verts = obj.vertices.detach().float().to(self.device)
        self.full_faces = obj.faces.long().to(self.device)
        self._masker = None  # (camera key, ModelObjectMasker) of the depth-fit start
        if simplified:
            self.colors = colors.to(self.device)
        elif getattr(obj, "uv", None) is not None and getattr(obj, "texture", None) is not None:
            self.colors = Texture(obj.uv.float().to(self.device),
                                  obj.texture.float().permute(2, 0, 1).contiguous().to(self.device))
        else:
            self.colors = obj.vertex_colors.float().to(self.device)
        # object-frame samples for smoothness/oscillation (cheaper than all vertices)
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(self.verts.shape[0], generator=g)[:256]
        self.object_samples = self.verts[idx]
        self._sdf: Optional[MeshSDF] = None

    @property
    def sdf(self) -> MeshSDF:
        """The object's :class:`MeshSDF`, built on first use."""
        if self._sdf is None:
            self._sdf = MeshSDF(self.full_verts, self.full_faces, device=self.device)
        return self._sdf

    # ------------------------------------------------------------------------------ setup
    def _prepare(self, frames: Sequence[FrameObservation], camera: Camera, T_init: torch.Tensor):
        B = len(frames)
        H, W = camera.height, camera.width
        obs = {"object": None, "hand": None, "rgb": None}
        for key, attr in (("object", "object_mask"), ("hand", "hand_mask"), ("rgb", "rgb")):
            present = [getattr(f, attr) is not None for f in frames]
            if all(present):
                obs[key] = torch.stack([_image_tensor(getattr(f, attr), f"frame {i} {attr}", H, W)
                                        for i, f in enumerate(frames)]).to(self.device)
            elif any(present):
                raise ValueError(f"{attr} is given for some frames of the window but not all")
        obs["depth"] = _depth_tensor(frames, H, W, self.device)
        if obs["rgb"] is not None and obs["rgb"].shape[1] != 3:
            raise ValueError("rgb must have 3 channels")
        for key in ("object", "hand"):
            if obs[key] is not None:
                obs[key] = obs[key][:, :1]
        has_hand = self.hand is not None and all(f.q is not None and f.T_cam_hand is not None for f in frames)
        q = T_hand = None
        if has_hand:
            q = torch.stack([torch.as_tensor(np.asarray(f.q), dtype=torch.float32).reshape(-1)
                             for f in frames]).to(self.device)
            if q.shape[1] != self.hand.num_joints:
                raise ValueError(f"q must have {self.hand.num_joints} joints, got {q.shape[1]}")
            T_hand = torch.stack([torch.as_tensor(np.asarray(f.T_cam_hand), dtype=torch.float32).reshape(4, 4)
                                  for f in frames]).to(self.device)
            if not (torch.isfinite(q).all() and torch.isfinite(T_hand).all()):
                raise ValueError("joint angles or camera->hand poses contain NaN or inf")
        # RoI per frame: union of the projected object at the initial pose and the observed mask
        with torch.no_grad():
            uv, z = camera.project(se3.transform_points(T_init, self.verts).double())
            if not bool((z > 1e-3).all()):
                raise ValueError("the initial object pose puts part of the object behind the camera")
            lo, hi = uv.amin(1) - 0.5, uv.amax(1) + 0.5  # (B, 2)
            if obs["object"] is not None:
                for b in range(B):
                    ys, xs = torch.nonzero(obs["object"][b, 0] > 0.5, as_tuple=True)
                    if len(xs):
                        lo[b] = torch.minimum(lo[b], torch.stack([xs.min(), ys.min()]).double() - 0.5)
                        hi[b] = torch.maximum(hi[b], torch.stack([xs.max(), ys.max()]).double() + 0.5)
            side = (hi - lo).amax(-1) * (1 + 2 * self.config.roi_margin)
            side = side.clamp(min=16.0)
            left = 0.5 * (lo + hi) - 0.5 * side[:, None]
        return obs, has_hand, q, T_hand, left, side

    def _crop(self, obs, left, side, size, camera):
        roi = RoI(camera, left, side, size)
        out = {"K": roi.K.float(), "valid": roi.valid_mask()[:, 0].float()}
        out["object"] = None if obs["object"] is None else roi.crop(obs["object"], mode="area")[:, 0].clamp(0, 1)
        out["hand"] = None if obs["hand"] is None else roi.crop(obs["hand"], mode="area")[:, 0].clamp(0, 1)
        out["rgb"] = None if obs["rgb"] is None else roi.crop(obs["rgb"], mode="bilinear")
        out["depth"] = None if obs.get("depth") is None else roi.crop(obs["depth"], mode="nearest")[:, 0]
        return out

    # ------------------------------------------------------------------------------ losses
    def _hand_state(self, q, T_hand, xi_hand, dq):
        """Corrected joint angles ``(B, J)`` and hand base poses ``(B, 4, 4)``."""
        qq = q if dq is None else q + dq
        Th = T_hand if xi_hand is None else se3.apply_delta(T_hand, xi_hand.expand(T_hand.shape[0], 6))
        return qq, Th

    def _static_hand(self, hand_mesh, crop, size):
        """Pre-render a hand that is not optimised: its depth ``(B, S, S)`` (0 = no hand) in the RoI.

        The object is then rendered alone and occluded by this depth map, which halves the cost
        per iteration; the hand mask term is unchanged except that it carries no gradient (with a
        fixed hand it depends on the object only through occlusion, which the object mask term
        already sees)."""
        with torch.no_grad():
            out = render([hand_mesh], crop["K"], size, band=self.config.band)
        crop["hand_depth"] = torch.where(out.hard_masks[:, 0], out.depth, torch.zeros_like(out.depth))

    def _render_terms(self, T_obj, crop, weights, hand_mesh, size):
        """The registry's image terms for poses ``(R, B, 4, 4)`` (R hypotheses) -> (dict of ``(R,)``
        tensors, visible object hard mask ``(R B, S, S)``)."""
        R, B = T_obj.shape[:2]
        flat = T_obj.reshape(R * B, 4, 4)
        ov = se3.transform_points(flat, self.verts)

        static = hand_mesh is None and crop.get("hand_depth") is not None
        available = {name for name, key in (("object_mask", "object"), ("hand_mask", "hand"), ("rgb", "rgb"),
                                            ("depth", "depth")) if crop.get(key) is not None}
        if hand_mesh is not None or static:
            available.add("hand")
        active = weights.active("image", available)
        use_rgb = any("rgb" in p.needs for p in active)
        meshes, colors, oi = [], [], 0
        if hand_mesh is not None:
            hv, hf = hand_mesh
            hv = hv.unsqueeze(0).expand(R, -1, -1, -1).reshape(R * B, -1, 3)
            meshes.append((hv, hf))
            colors.append(None)
            oi = 1
        meshes.append((ov, self.faces))
        colors.append(self.colors if use_rgb else None)
        K = crop["K"].unsqueeze(0).expand(R, -1, -1, -1).reshape(R * B, 3, 3)
        out = render(meshes, K, size, colors=colors if use_rgb else None, band=self.config.band)
        soft_obj = out.soft_masks[:, oi]
        hard_obj = out.hard_masks[:, oi]
        ren_rgb = out.rgb
        soft_hand = out.soft_masks[:, 0] if hand_mesh is not None else None
        if static:
            with torch.no_grad():
                hd = crop["hand_depth"].unsqueeze(0).expand(R, *crop["hand_depth"].shape).reshape(R * B, size, size)
                od = out.depth.detach()
                covered = od > 0
                # object depth for its soft halo outside the object: its mean visible depth
                mean_d = (od.flatten(1).sum(1) / covered.flatten(1).sum(1).clamp(min=1))[:, None, None]
                ref_d = torch.where(covered, od, mean_d.expand_as(od))
                occluded = (hd > 0) & (hd < ref_d)
                hand_vis = ((hd > 0) & ~(covered & (od < hd))).to(soft_obj.dtype)
            keep = (~occluded).to(soft_obj.dtype)
            soft_obj = soft_obj * keep
            hard_obj = hard_obj & ~occluded
            ren_rgb = None if ren_rgb is None else ren_rgb * keep[:, None]
            soft_hand = hand_vis

        x = ImageInputs(R=R, B=B, config=self.config, soft_object=soft_obj, hard_object=hard_obj,
                        soft_hand=soft_hand, rendered_rgb=ren_rgb if use_rgb else None, rendered_depth=out.depth,
                        object_mask=crop["object"], hand_mask=crop["hand"], rgb=crop["rgb"],
                        depth=crop.get("depth"), valid=crop["valid"])
        terms = {p.name: p.fn(x).reshape(R, B).mean(1) for p in active}
        return terms, hard_obj

    def _loss(self, T_obj, crop, weights, hand, size, hand_pts=None, xi_hand=None, dq=None):
        """Total loss ``(R,)`` and unweighted terms (dict of ``(R,)``) for poses ``(R, B, 4, 4)``: the
        registry's image terms, then its physics terms (with hand points ``hand_pts``), then its
        priors on the hand corrections ``xi_hand`` / ``dq``, each weighted and added in that order."""
        terms, hard_obj = self._render_terms(T_obj, crop, weights, hand, size)
        total = sum(weights[k] * v for k, v in terms.items())
        R = T_obj.shape[0]
        if hand_pts is not None and weights.uses_physics:
            phys_tot, phys = [], {}
            for r in range(R):
                t, d, _ = physics_terms(self.sdf, hand_pts, T_obj[r], weights, object_vertices=self.object_samples)
                phys_tot.append(t)
                for k, v in d.items():
                    phys.setdefault(k, []).append(v)
            total = total + torch.stack(phys_tot)
            for k, v in phys.items():
                terms[k] = torch.stack(v)
        x = CorrectionInputs(camera_hand=xi_hand, joint_offsets=dq)
        present = {n for n in ("camera_hand", "joint_offsets") if getattr(x, n) is not None}
        for p in weights.active("correction", present):
            terms[p.name] = p.fn(x).expand(R)
            total = total + weights[p.name] * terms[p.name]
        if not torch.is_tensor(total):
            total = T_obj.new_zeros(R)
        return total, terms, hard_obj

    # ------------------------------------------------------------------------------ stages
    def _hypotheses(self, T0, crop_lo, weights, hand_lo, camera, obs, n: int, extra=None):
        """Coarse search: candidate poses ``(N, B, 4, 4)`` sorted by low-resolution loss (``extra``
        ``(E, B, 4, 4)``: more candidates, scored with them; the last ``E`` indices)."""
        cfg = self.config
        B = T0.shape[0]
        g = torch.Generator().manual_seed(cfg.seed)  # CPU draws: the same hypotheses on every device
        d = torch.randn(n, 6, generator=g, device="cpu").to(self.device)
        # uniform in balls of the given radii (first = no change)
        radius = torch.rand(n, 2, generator=g, device="cpu").to(self.device) ** (1 / 3)
        rv = d[:, 3:] / d[:, 3:].norm(dim=-1, keepdim=True) * cfg.hypothesis_rotation * radius[:, :1]
        tv = d[:, :3] / d[:, :3].norm(dim=-1, keepdim=True) * cfg.hypothesis_translation * radius[:, 1:]
        deltas = torch.cat([tv, rv], -1)
        deltas[0] = 0
        if obs["object"] is not None and n > 1:
            # centroid hypothesis: move along x/y at constant depth so the projected centre lands on
            # the observed mask centroid of the last frame
            m = obs["object"][-1, 0]
            if float(m.sum()) > 0:
                ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
                K = camera.K.float()
                u, v = xs.float().mean(), ys.float().mean()
                # object centre = mean of the vertices, not necessarily the origin
                cen = se3.transform_points(T0[-1:], self.verts.mean(0, keepdim=True))[0, 0]
                z = cen[2]
                target = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])
                deltas[1, :3] = target - cen
                deltas[1, 3:] = 0
        cands = se3.apply_delta(T0.unsqueeze(0).expand(n, B, 4, 4), deltas[:, None].expand(n, B, 6))
        if extra is not None:
            cands = torch.cat([cands, extra.to(cands)])
        n = cands.shape[0]
        scores = []
        with torch.no_grad():
            for s in range(0, n, 32):
                tot, _, _ = self._loss(cands[s:s + 32], crop_lo, weights.without("physics"), hand_lo,
                                       cfg.coarse_size)
                scores.append(tot)
        order = torch.argsort(torch.cat(scores))
        return cands[order], order

    def _adam(self, T_start, crop, weights, hand_ctx, size, iterations, history=None):
        """Adam in two stages for poses ``(R, B, 4, 4)``: rendering terms only, then (when physics
        terms are on and a hand is present) all terms from the stage-1 result for the last
        ``physics_fraction`` of the iterations at a lower step size. Physics from the start would
        let the deep penetrations of a poor initial pose push the object away from the image
        evidence. Returns best poses, losses ``(R,)``, (hand correction, joint offsets), iterations."""
        cfg = self.config
        render_only = weights.without("physics")
        two_stage = weights.uses_physics and hand_ctx["q"] is not None and cfg.physics_fraction > 0
        n2 = int(round(cfg.physics_fraction * iterations)) if two_stage else 0
        if two_stage and iterations > 0:
            n2 = max(n2, 1)
        T1, l1, hand1, it1 = self._adam_stage(T_start, crop, render_only if two_stage else weights, hand_ctx, size,
                                              iterations - n2, 1.0, history)
        if n2 == 0:
            return T1, l1, hand1, it1
        T2, l2, hand2, it2 = self._adam_stage(T1, crop, weights, hand_ctx, size, n2, cfg.physics_lr_scale, history,
                                              hand_init=hand1)
        return T2, l2, hand2, it1 + it2

    def _adam_stage(self, T_start, crop, weights, hand_ctx, size, iterations, lr_scale=1.0, history=None,
                    hand_init=(None, None)):
        cfg = self.config
        R, B = T_start.shape[:2]
        v = torch.zeros(R, B, 3, requires_grad=True)
        w = torch.zeros(R, B, 3, requires_grad=True)
        groups = [{"params": [v], "lr": cfg.lr_translation}, {"params": [w], "lr": cfg.lr_rotation}]
        xi_hand = dq = None
        q = hand_ctx["q"]
        if q is not None and cfg.optimize_camera_hand and R == 1:
            vh = (torch.zeros(3) if hand_init[0] is None else hand_init[0][:3].clone()).requires_grad_(True)
            wh = (torch.zeros(3) if hand_init[0] is None else hand_init[0][3:].clone()).requires_grad_(True)
            groups += [{"params": [vh], "lr": cfg.lr_hand_translation}, {"params": [wh], "lr": cfg.lr_hand_rotation}]
        if q is not None and cfg.optimize_joint_offsets and R == 1:
            dq = (torch.zeros(q.shape[1]) if hand_init[1] is None else hand_init[1].clone()).requires_grad_(True)
            groups.append({"params": [dq], "lr": cfg.lr_joint})
        opt = torch.optim.Adam(groups, betas=(cfg.adam_beta1, 0.999))
        base_lr = [gr["lr"] * lr_scale for gr in groups]
        best = torch.full((R,), float("inf"))
        best_T = T_start.clone()
        best_hand = hand_init
        since = 0
        it_done = 0
        for it in range(iterations):
            frac = it / max(iterations - 1, 1)
            scale = cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
            for gr, lr in zip(groups, base_lr):
                gr["lr"] = lr * scale
            T = se3.apply_delta(T_start, torch.cat([v, w], -1))
            if q is not None and cfg.optimize_camera_hand and R == 1:
                xi_hand = torch.cat([vh, wh])
            hand_mesh, hand_pts = self._hand_geometry(hand_ctx, xi_hand, dq)
            if hand_ctx.get("static"):
                hand_mesh = None  # pre-rendered occluder in crop["hand_depth"]
            total, terms, _ = self._loss(T, crop, weights, hand_mesh, size, hand_pts, xi_hand, dq)
            with torch.no_grad():
                improved = total < best * (1 - cfg.early_stop_rel_tol)
                better = total < best
                best_T[better] = T.detach()[better]
                best = torch.where(better, total.detach(), best)
                if R == 1 and bool(better[0]):
                    best_hand = (None if xi_hand is None else xi_hand.detach().clone(),
                                 None if dq is None else dq.detach().clone())
            if history is not None:
                history.setdefault("total", []).append(float(total.detach()[0]))
                for k, val in terms.items():
                    history.setdefault(k, []).append(float(val.detach()[0]))
            it_done = it + 1
            since = 0 if bool(improved.any()) else since + 1
            if cfg.early_stop_patience > 0 and since >= cfg.early_stop_patience:
                break
            opt.zero_grad()
            total.sum().backward()
            opt.step()
        return best_T, best, best_hand, it_done

    def _hand_geometry(self, hand_ctx, xi_hand=None, dq=None):
        """Hand mesh ``((B, V, 3), faces)`` in the camera frame and surface points ``(B, N, 3)``."""
        if hand_ctx["q"] is None:
            return None, None
        if xi_hand is None and dq is None and "mesh" in hand_ctx:
            return hand_ctx["mesh"], hand_ctx["points"]
        q, Th = self._hand_state(hand_ctx["q"], hand_ctx["T_hand"], xi_hand, dq)
        T_links = self.hand.forward_kinematics(q, Th)
        hv, hf, _ = self.hand.posed_mesh(q, Th, link_poses=T_links)
        pts = self.hand.surface_points(q, Th, link_poses=T_links)
        return (hv, hf), pts

    def _penetration_gd(self, T, hand_pts, steps):
        """Gauss-Newton steps on the translation that push penetrating hand points out along the
        SDF normals: solves ``min_t sum_i (d_i - n_i . t)^2`` over points with depth ``d_i > 0``
        (moving the object by ``t`` changes a point's SDF by ``-n_i . t``). Unlike Adam it moves
        the object only along the contact normals; a small damping keeps ill-posed directions put."""
        tol = self.config.penetration_tolerance
        for _ in range(steps):
            with torch.no_grad():
                sdf, n = signed_distance_world(self.sdf, hand_pts, T)
                depth = torch.relu(-sdf) + torch.where(sdf < 0, 2e-4, 0.0)  # aim 0.2 mm outside
                if float(torch.relu(-sdf).max()) <= tol:
                    break
                pen = (sdf < 0).to(T.dtype)[..., None]                       # (B, N, 1)
                A = (n * pen).transpose(1, 2) @ n + 1e-6 * torch.eye(3)       # (B, 3, 3)
                b = ((n * pen) * depth[..., None]).sum(1)                     # (B, 3)
                # d_i - n_i . t = 0 in the least-squares sense: t = A^-1 b, moved against n
                t = -torch.linalg.solve(A, b[..., None])[..., 0]
                T = se3.apply_delta(T, torch.cat([t, torch.zeros_like(t)], -1))
        return T.detach()

    # ------------------------------------------------------------------------------ API
    def refine(self, frames: Sequence[FrameObservation], camera: Camera, T_cam_obj_init,
               max_iterations: Optional[int] = None, terms: Optional[Sequence[str]] = None,
               weights: Optional[Weights] = None, num_hypotheses: Optional[int] = None,
               candidates=None, config: Optional[RefineConfig] = None) -> RefineResult:
        """Refine the object pose of one frame or jointly over a window.

        Args:
            frames: ``B >= 1`` :class:`FrameObservation` (oldest first), camera-sized images.
            camera: :class:`hp_ros.core.camera.Camera` of the images.
            T_cam_obj_init: ``(4, 4)`` (shared by all frames) or ``(B, 4, 4)`` initial poses.
            max_iterations: Adam iterations (None = config).
            terms: subset of :data:`TERM_NAMES` to use (None/empty = all with non-zero weight).
            weights: override of the refiner's weights.
            num_hypotheses: override of ``config.num_hypotheses`` (0 = no coarse search).
            candidates: ``(E, 4, 4)`` more starting poses of the last frame (e.g. a global search's,
                :mod:`hp_ros.core.global_pose`), scored with the hypotheses in the coarse search (the
                window's other frames move with the last one).
            config: settings of this call only (None: the refiner's ``config``; e.g. the smaller
                steps of a start that is close already, :func:`hp_ros.core.global_pose.cold_start`).
                Its ``face_budget`` is the refiner's (the rendered mesh is built once).
        Returns:
            :class:`RefineResult`, its tensors on the CPU (the work runs on ``device``: tensors made
            without a device inside are made on it).
        Raises:
            ValueError on an empty window, NaN poses, unknown term names, mismatched images.
        """
        on_device = contextlib.nullcontext() if self.device.type == "cpu" else self.device
        saved = self.config
        if config is not None:  # one refinement at a time per Refiner (the node serves one request at a time)
            self.config = config
        try:
            with on_device:
                res = self._refine(frames, camera, T_cam_obj_init, max_iterations, terms, weights, num_hypotheses,
                                   candidates)
        finally:
            self.config = saved
        for name in ("T_cam_obj", "T_cam_obj_init", "T_cam_hand", "joint_offsets"):
            value = getattr(res, name)
            if value is not None:
                setattr(res, name, value.cpu())
        return res

    def _refine(self, frames, camera, T_cam_obj_init, max_iterations=None, terms=None, weights=None,
                num_hypotheses=None, candidates=None) -> RefineResult:
        """:meth:`refine` on the current default device."""
        t_start = time.perf_counter()
        cfg = self.config
        if self.device.type != "cpu":  # intrinsics on the device: the RoI maths mixes them with poses
            camera = replace(camera, K=camera.K.to(self.device))
        frames = list(frames)
        if not frames:
            raise ValueError("refine needs at least one frame")
        B = len(frames)
        T0 = torch.as_tensor(np.asarray(T_cam_obj_init) if not torch.is_tensor(T_cam_obj_init) else T_cam_obj_init)
        T0 = T0.detach().to(self.device, torch.float32)
        if T0.shape == (4, 4):
            T0 = T0.expand(B, 4, 4).clone()
        if T0.shape != (B, 4, 4):
            raise ValueError(f"T_cam_obj_init must be (4, 4) or ({B}, 4, 4), got {tuple(T0.shape)}")
        if not torch.isfinite(T0).all():
            raise ValueError("initial object pose contains NaN or inf")
        # re-orthonormalise (messages carry slightly denormalised quaternions)
        T0 = se3.make_pose(roma_special_procrustes(T0[:, :3, :3]), T0[:, :3, 3])
        iters = cfg.max_iterations if max_iterations is None else int(max_iterations)
        if iters < 0:
            raise ValueError(f"max_iterations must be >= 0, got {iters}")
        w = (self.weights if weights is None else weights).restricted(terms)
        n_hyp = cfg.num_hypotheses if num_hypotheses is None else int(num_hypotheses)

        obs, has_hand, q, T_hand, left, side = self._prepare(frames, camera, T0)
        if obs["object"] is None and obs["hand"] is None and not (has_hand and w.uses_physics):
            raise ValueError("nothing to refine against: no observed masks and no hand for physics")
        physics_on = has_hand and w.uses_physics
        hand_ctx = {"q": q, "T_hand": T_hand}
        if has_hand:
            hand_ctx["mesh"], hand_ctx["points"] = self._hand_geometry({"q": q, "T_hand": T_hand})
            hand_ctx["mesh"] = (hand_ctx["mesh"][0].detach(), hand_ctx["mesh"][1])
            hand_ctx["points"] = hand_ctx["points"].detach()
        hand_pts0 = hand_ctx.get("points") if physics_on else None
        crop = self._crop(obs, left, side, cfg.roi_size, camera)
        hand_mesh0 = hand_ctx.get("mesh")
        static = has_hand and cfg.static_hand_occluder and not (cfg.optimize_camera_hand or cfg.optimize_joint_offsets)
        if static:
            self._static_hand(hand_mesh0, crop, cfg.roi_size)
            hand_ctx["static"] = True
            hand_mesh0 = None

        with torch.no_grad():
            init_total, _, _ = self._loss(T0[None], crop, w, hand_mesh0, cfg.roi_size, hand_pts0)
        history: Dict[str, List[float]] = {}
        T_start, fit_conf = self._depth_fit_start(T0, frames, obs, camera)
        T_best = T_start[None]
        chosen = 0
        if n_hyp > 1 or candidates is not None:
            crop_lo = self._crop(obs, left, side, cfg.coarse_size, camera)
            if static:
                self._static_hand(hand_ctx["mesh"], crop_lo, cfg.coarse_size)
            extra = self._extra_candidates(T0, T_start, candidates)
            cands, order = self._hypotheses(T_start, crop_lo, w, hand_mesh0, camera, obs, max(n_hyp, 1), extra)
            k = min(cfg.top_k, cands.shape[0])
            T_best = cands[:k]
            if k > 1 and cfg.top_k_iterations > 0:
                w_render = w.without("physics")
                Tk, lk, _, _ = self._adam_stage(T_best, crop, w_render, hand_ctx, cfg.roi_size,
                                                cfg.top_k_iterations)
                j = int(torch.argmin(lk))
                T_best, chosen = Tk[j:j + 1], int(order[j])
            elif k > 1:  # no iterations: the top k scored at the RoI's resolution, the best continues
                with torch.no_grad():
                    lk, _, _ = self._loss(T_best, crop, w.without("physics"), hand_mesh0, cfg.roi_size)
                j = int(torch.argmin(lk))
                T_best, chosen = T_best[j:j + 1], int(order[j])
            else:
                chosen = int(order[0])
        T_fin, best_loss, (xi_hand, dq), it_done = self._adam(T_best, crop, w, hand_ctx, cfg.roi_size,
                                                              iters, history)
        T_fin = T_fin[0]
        hand_geo = self._hand_geometry(hand_ctx, xi_hand, dq) if has_hand else (None, None)
        hand_mesh_f = None if (hand_geo[0] is None or static) else (hand_geo[0][0].detach(), hand_geo[0][1])
        hand_pts_f = None if hand_geo[1] is None else hand_geo[1].detach()
        if physics_on and w.penetration > 0 and cfg.penetration_gd_steps > 0:
            T_fin = self._penetration_gd(T_fin, hand_pts_f, cfg.penetration_gd_steps)

        with torch.no_grad():
            fin_total, fin_terms, pred = self._loss(T_fin[None], crop, w, hand_mesh_f, cfg.roi_size,
                                                       hand_pts_f if physics_on else None)
            if obs["object"] is not None:
                gt = crop["object"] > 0.5
                inter = (pred & gt).flatten(1).sum(1).float()
                union = (pred | gt).flatten(1).sum(1).float()
                iou_roi = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).cpu().numpy()
                iou = self._full_iou(T_fin, obs, camera)
            else:
                iou = iou_roi = np.full(B, np.nan)
            if hand_pts_f is not None:
                sdf, _ = signed_distance_world(self.sdf, hand_pts_f, T_fin)
                pen = (max_penetration_depth(sdf) * 1000.0).cpu().numpy()
                cc = contact_count(sdf).cpu().numpy()
            else:
                pen, cc = np.zeros(B), np.zeros(B, dtype=np.int64)
        hess = (self._curvature(T_fin, crop, w, hand_mesh_f, hand_pts_f if physics_on else None)
                if cfg.curvature else None)
        T_hand_out = None
        if has_hand:
            T_hand_out = self._hand_state(q, T_hand, xi_hand, dq)[1].detach()
        return RefineResult(
            T_cam_obj=T_fin.detach(), T_cam_obj_init=T0, T_cam_hand=T_hand_out,
            joint_offsets=None if dq is None else dq.detach(), history=history,
            initial_loss=float(init_total[0]), final_loss=float(fin_total[0]),
            final_terms={k: float(v[0]) for k, v in fin_terms.items()}, mask_iou=np.asarray(iou, float),
            max_penetration_mm=np.asarray(pen, float), contact_count=np.asarray(cc, np.int64),
            iterations=it_done, elapsed_s=time.perf_counter() - t_start,
            hypotheses=n_hyp if n_hyp > 1 else 0, chosen_hypothesis=chosen, hessian_diag=hess,
            mask_iou_roi=np.asarray(iou_roi, float), depth_fit_confidence=fit_conf)

    def _extra_candidates(self, T0, T_start, candidates):
        """``(E, B, 4, 4)`` poses scored besides the hypotheses around ``T_start``: the given ``T0`` when
        the depth fit moved the start, and the caller's ``candidates`` ``(E, 4, 4)`` of the last frame
        (earlier frames moved with it). None when there are none."""
        extra = [] if T_start is T0 else [T0[None]]
        if candidates is not None:
            C = torch.as_tensor(np.asarray(candidates), dtype=torch.float32).reshape(-1, 4, 4).to(T0.device)
            corr = C @ torch.linalg.inv(T0[-1])                                  # (E, 4, 4)
            extra.append(corr[:, None] @ T0[None])
        return torch.cat(extra) if extra else None

    def _full_iou(self, T: torch.Tensor, obs: dict, camera: Camera) -> np.ndarray:
        """``(B,)`` mask IoU at the camera's resolution of poses ``T`` ``(B, 4, 4)``."""
        out = []
        for b in range(T.shape[0]):
            m = (obs["object"][b, 0] > 0.5).cpu().numpy()
            h = None if obs["hand"] is None else (obs["hand"][b, 0] > 0.5).cpu().numpy()
            out.append(full_resolution_iou(self.verts.cpu(), self.faces.cpu(), T[b].cpu(), camera.K.cpu(), m, h))
        return np.asarray(out, float)

    def _depth_fit_start(self, T0: torch.Tensor, frames, obs: dict, camera: Camera):
        """Start ``(B, 4, 4)`` from the model backend's depth fit (ICP of the object model against the
        last frame's depth, hand pixels excluded) when it is confident, with its confidence; else
        ``(T0, nan)``. The whole window moves by the last frame's correction."""
        cfg = self.config
        depth = getattr(frames[-1], "depth", None)
        if not cfg.depth_fit or depth is None or obs.get("depth") is None:
            return T0, float("nan")
        from hp_ros.core.segmentation.model import ModelObjectMasker

        key = (tuple(camera.K.reshape(-1).tolist()), camera.width, camera.height)
        if self._masker is None or self._masker[0] != key:
            self._masker = (key, ModelObjectMasker(self.obj, camera.K.double().cpu().numpy(), camera.width,
                                                   camera.height, device=str(self.device)))
        d = obs["depth"][-1, 0].cpu().numpy()
        hand = None if obs["hand"] is None else (obs["hand"][-1, 0] > 0.5).cpu().numpy()
        T_last = T0[-1].double().cpu().numpy()
        try:
            fit = self._masker[1].fit(d, T_last, cfg.depth_fit_sigma, exclude=hand)
        except ValueError:
            return T0, float("nan")
        if fit is None or not np.isfinite(fit.T_cam_obj).all():
            return T0, float("nan")
        if fit.confidence < cfg.depth_fit_min_confidence:
            return T0, float(fit.confidence)
        T_fit = _constrained_fit(T_last, fit.T_cam_obj, fit.covariance, cfg.depth_fit_max_rot_sigma)
        corr = torch.as_tensor(T_fit @ np.linalg.inv(T_last), dtype=torch.float32, device=T0.device)
        return corr @ T0, float(fit.confidence)

    def _curvature(self, T, crop, w, hand_mesh, hand_pts, h: float = 1e-3):
        """Diagonal curvature ``(6,)`` of the loss w.r.t. the last frame's pose delta, from central
        differences of the analytic gradient (steps of 1 mm / 1 mrad). None on failure."""
        try:
            B = T.shape[0]
            diag = np.zeros(6)
            for i in range(6):
                grads = []
                for s in (-1.0, 1.0):
                    xi = torch.zeros(B, 6)
                    xi[-1, i] = s * h
                    xi.requires_grad_(True)
                    tot, _, _ = self._loss(se3.apply_delta(T, xi)[None], crop, w, hand_mesh,
                                              self.config.roi_size, hand_pts)
                    (g,) = torch.autograd.grad(tot.sum(), xi)
                    grads.append(float(g[-1, i]))
                diag[i] = (grads[1] - grads[0]) / (2 * h)
            return diag
        except Exception:  # noqa: BLE001 - covariance is best effort
            return None


def _constrained_fit(T_prior: np.ndarray, T_fit: np.ndarray, covariance, max_rot_sigma: float) -> np.ndarray:
    """The depth fit ``(4, 4)`` with only the rotation it constrains: its rotation change from the prior
    (``R_fit = exp(w) R_prior``) keeps the components along the eigenvectors of its covariance's
    rotation block with a std. dev. below ``max_rot_sigma`` rad and below 4x the smallest one. Depth cannot see the spin of a
    body of revolution (the ICP lets it drift freely); the colours can, from the prior's spin."""
    import roma

    R0 = torch.as_tensor(T_prior[:3, :3], dtype=torch.float64)
    w = roma.rotmat_to_rotvec(torch.as_tensor(T_fit[:3, :3], dtype=torch.float64) @ R0.T).numpy()
    if covariance is None or not np.isfinite(covariance).all():
        w = np.zeros(3)
    else:
        lam, V = np.linalg.eigh(np.asarray(covariance, np.float64)[3:, 3:])
        sig = np.sqrt(np.clip(lam, 0, None))
        # a nearly round body (a can with a label seam) gets a finite but much larger spin sigma
        keep = (sig < max_rot_sigma) & (sig < 4.0 * max(float(sig.min()), 1e-6))
        w = V @ (keep * (V.T @ w))
    out = np.eye(4)
    out[:3, :3] = (roma.rotvec_to_rotmat(torch.as_tensor(w)) @ R0).numpy()
    out[:3, 3] = T_fit[:3, 3]
    return out


def roma_special_procrustes(R: torch.Tensor) -> torch.Tensor:
    """Closest rotation ``(..., 3, 3)`` to (nearly orthonormal) matrices ``(..., 3, 3)``."""
    import roma

    return roma.special_procrustes(R)
