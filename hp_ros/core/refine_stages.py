"""The refiner's optimisation stages (:class:`hp_ros.core.refine.Refiner`, mixed in): the coarse
search over hypotheses and given candidates, Adam in two stages (rendering terms, then all), and the
Gauss-Newton steps out of penetration. ROS-free."""
from __future__ import annotations

import math

import numpy as np
import torch

from hp_ros.core import se3
from hp_ros.core.sdf import signed_distance_world


class RefinerStages:
    """Mixin of :class:`hp_ros.core.refine.Refiner` (uses its ``config``, ``device``, ``verts``,
    ``sdf`` and the loss of :class:`hp_ros.core.refine_losses.RefinerLosses`)."""

    def _coarse_search(self, T0, T_start, candidates, obs, left, side, camera, crop, w, hand_ctx, hand_mesh0,
                       static: bool, n_hyp: int):
        """The start of Adam ``(1, B, 4, 4)`` and the index of its hypothesis: hypotheses around
        ``T_start`` and the ``candidates`` scored at ``coarse_size``, the best ``top_k`` refined briefly
        (or scored at ``roi_size``), the best of them."""
        cfg = self.config
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
        return T_best, chosen

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
