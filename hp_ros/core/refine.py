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

Modules: this one (the API, :class:`Refiner`'s set-up and the order of the stages, the depth-fit
start, the final scores); :mod:`.refine_types` (config, frame, result); :mod:`.refine_inputs`
(observations as tensors, RoI and crops); :mod:`.refine_losses` (hand geometry, loss assembly);
:mod:`.refine_stages` (coarse search, Adam, penetration steps); :mod:`.refine_depth` (depth).

Shapes: ``B`` frames of the window (oldest first), ``J`` joints, ``S`` RoI side.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from hp_ros.core import se3
from hp_ros.core.camera import Camera
from hp_ros.core.physics import contact_count, max_penetration_depth
from hp_ros.core.priors import Weights, term_names
from hp_ros.core.refine_depth import full_resolution_iou, render_mesh
from hp_ros.core.refine_inputs import RefinerInputs
from hp_ros.core.refine_losses import RefinerLosses
from hp_ros.core.refine_stages import RefinerStages
from hp_ros.core.refine_types import FrameObservation, RefineConfig, RefineResult
from hp_ros.core.render import Texture
from hp_ros.core.sdf import MeshSDF, signed_distance_world

__all__ = ["TERM_NAMES", "Weights", "RefineWeights", "RefineConfig", "FrameObservation", "RefineResult", "Refiner",
           "perturb_pose"]

# the one weight type (the registry's terms): RefineWeights is its name from before the registry
RefineWeights = Weights


def __getattr__(name):
    if name == "TERM_NAMES":  # derived from the registry when asked (a prior registered later is in it)
        return term_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def perturb_pose(T: torch.Tensor, translation: float, rotation: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Poses ``(..., 4, 4)`` moved by exactly ``translation`` m and rotated by exactly ``rotation``
    rad (about the object's origin), in random directions (``apply_delta`` convention)."""
    lead = T.shape[:-2]
    d = torch.randn(*lead, 6, generator=generator, dtype=torch.float64)
    v = d[..., :3] / d[..., :3].norm(dim=-1, keepdim=True) * translation
    w = d[..., 3:] / d[..., 3:].norm(dim=-1, keepdim=True) * rotation
    return se3.apply_delta(T.to(torch.float64), torch.cat([v, w], -1)).to(T.dtype)


class Refiner(RefinerInputs, RefinerLosses, RefinerStages):
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
        T0 = self._initial_poses(T_cam_obj_init, B)
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
            T_best, chosen = self._coarse_search(T0, T_start, candidates, obs, left, side, camera, crop, w, hand_ctx,
                                                 hand_mesh0, static, n_hyp)
        T_fin, best_loss, (xi_hand, dq), it_done = self._adam(T_best, crop, w, hand_ctx, cfg.roi_size,
                                                              iters, history)
        T_fin = T_fin[0]
        hand_geo = self._hand_geometry(hand_ctx, xi_hand, dq) if has_hand else (None, None)
        hand_mesh_f = None if (hand_geo[0] is None or static) else (hand_geo[0][0].detach(), hand_geo[0][1])
        hand_pts_f = None if hand_geo[1] is None else hand_geo[1].detach()
        if physics_on and w.penetration > 0 and cfg.penetration_gd_steps > 0:
            T_fin = self._penetration_gd(T_fin, hand_pts_f, cfg.penetration_gd_steps)

        fin_total, fin_terms, iou, iou_roi, pen, cc = self._final_scores(T_fin, crop, w, hand_mesh_f, hand_pts_f,
                                                                         physics_on, obs, camera)
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

    def _initial_poses(self, T_cam_obj_init, B: int) -> torch.Tensor:
        """The initial poses ``(B, 4, 4)`` float32 on the device, checked and re-orthonormalised, from
        ``(4, 4)`` (shared by the window) or ``(B, 4, 4)``."""
        T0 = torch.as_tensor(np.asarray(T_cam_obj_init) if not torch.is_tensor(T_cam_obj_init) else T_cam_obj_init)
        T0 = T0.detach().to(self.device, torch.float32)
        if T0.shape == (4, 4):
            T0 = T0.expand(B, 4, 4).clone()
        if T0.shape != (B, 4, 4):
            raise ValueError(f"T_cam_obj_init must be (4, 4) or ({B}, 4, 4), got {tuple(T0.shape)}")
        if not torch.isfinite(T0).all():
            raise ValueError("initial object pose contains NaN or inf")
        # re-orthonormalise (messages carry slightly denormalised quaternions)
        return se3.make_pose(roma_special_procrustes(T0[:, :3, :3]), T0[:, :3, 3])

    def _final_scores(self, T_fin, crop, w, hand_mesh_f, hand_pts_f, physics_on: bool, obs: dict, camera: Camera):
        """At the final poses ``(B, 4, 4)``: total loss ``(1,)`` and terms, mask IoU at the camera's
        resolution and in the RoI ``(B,)`` (NaN without an observed mask), deepest penetration [mm] and
        contact count ``(B,)`` (0 without hand points)."""
        B = T_fin.shape[0]
        with torch.no_grad():
            fin_total, fin_terms, pred = self._loss(T_fin[None], crop, w, hand_mesh_f, self.config.roi_size,
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
        return fin_total, fin_terms, iou, iou_roi, pen, cc

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
