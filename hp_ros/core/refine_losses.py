"""The refiner's loss assembly (:class:`hp_ros.core.refine.Refiner`, mixed in): the hand's geometry
with its corrections, the registry's image terms on the rendered RoI (hand pre-rendered as a static
occluder when it is not optimised), its physics terms and its priors on the hand corrections.
ROS-free."""
from __future__ import annotations

import torch

from hp_ros.core import se3
from hp_ros.core.priors import CorrectionInputs, ImageInputs, physics_terms
from hp_ros.core.render import render


class RefinerLosses:
    """Mixin of :class:`hp_ros.core.refine.Refiner` (uses its ``hand``, ``verts``, ``faces``,
    ``colors``, ``object_samples``, ``sdf``, ``config``): hand geometry and the loss of poses."""

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
