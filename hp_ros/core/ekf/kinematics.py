"""The hand as the filter sees it: float64 numpy forward kinematics of one joint vector and the
hand points the models use (contact candidates, fingertips, all surface samples), in the hand
base frame."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["HandKinematics"]


class HandKinematics:
    """Numpy view of a :class:`hp_ros.core.hand.HandModel` for the filter's hot path.

    Points are kept in their links (``(K, 3)`` + link ids ``(K,)``) and moved with the link poses
    ``T_links`` ``(L, 4, 4)`` of :meth:`forward_kinematics`.
    """

    def __init__(self, hand):
        self.hand = hand
        cand = hand.contact_candidates
        self.cand_pts = hand.local_surface_points[cand].double().numpy()   # (K, 3) in their links
        self.cand_links = hand.point_link_ids[cand].numpy()                # (K,)
        # body of each candidate: finger 0-3 (thumb, index, middle, ring), -1 palm/base
        finger = np.full(hand.num_links, -1)
        for i, ln in enumerate(hand.link_names):
            f = hand.naming.parse_link(ln)
            if isinstance(f, tuple):
                finger[i] = f[0]
        self.cand_body = finger[self.cand_links]
        # all hand surface samples (N, 3) in their links, for the penetration projection: a knuckle
        # or the back of a finger can be inside a wrongly posed object as well as a finger pad
        self.surf_pts = hand.local_surface_points.double().numpy()
        self.surf_links = hand.point_link_ids.numpy()
        self.tip_idx = np.asarray(hand._tip_idx.cpu())
        try:  # numpy copies of the hand model's FK factors (see forward_kinematics)
            f = hand._np
            self.fk_factors = (f["O"], f["OA"], f["OB"], f["OC"], np.asarray(hand._q_index),
                               [(np.asarray(m), np.asarray(p)) for m, p in hand._levels], np.asarray(hand._inv_order))
        except (AttributeError, KeyError):
            self.fk_factors = None

    def as_q(self, q) -> np.ndarray:
        """Joint vector ``(J,)`` float64 from an array or tensor; readable error when malformed."""
        q = np.asarray(q.detach().cpu() if torch.is_tensor(q) else q, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.hand.num_joints or not np.all(np.isfinite(q)):
            raise ValueError(f"joint vector must have {self.hand.num_joints} finite values, got {q.shape[0]}")
        return q

    def forward_kinematics(self, q: np.ndarray) -> np.ndarray:
        """Link poses ``(L, 4, 4)`` float64 in the hand frame for one joint vector ``q`` ``(J,)``.

        The same closed form as :meth:`HandModel.forward_kinematics` (per-link factors
        ``O + sin q OA + (1 - cos q) OB + q OC``, composed level by level) in float64 numpy: at
        100 Hz with one configuration torch's per-op overhead cost ~0.5 ms, this ~0.05 ms.
        Falls back to the hand model's torch FK when it does not expose those factors."""
        fk = self.fk_factors
        if fk is None:
            qt = torch.as_tensor(q, dtype=self.hand.dtype)[None]
            return self.hand.forward_kinematics(qt)[0].double().numpy()
        O, OA, OB, OC, q_index, levels, inv_order = fk
        qs = q[q_index]
        local = O + np.sin(qs)[:, None, None] * OA + (1.0 - np.cos(qs))[:, None, None] * OB + qs[:, None, None] * OC
        world = local[levels[0][0]]
        out = [world]
        for members, parents in levels[1:]:
            world = world[parents] @ local[members]
            out.append(world)
        return np.concatenate(out)[inv_order]

    @staticmethod
    def _posed(T_links: np.ndarray, pts: np.ndarray, links: np.ndarray) -> np.ndarray:
        T = T_links[links]
        return np.einsum("kij,kj->ki", T[:, :3, :3], pts) + T[:, :3, 3]

    def candidate_points(self, T_links: np.ndarray, ids: Optional[np.ndarray] = None) -> np.ndarray:
        """Contact-candidate points ``(K or len(ids), 3)`` in the hand frame."""
        pts, links = (self.cand_pts, self.cand_links) if ids is None else (self.cand_pts[ids], self.cand_links[ids])
        return self._posed(T_links, pts, links)

    def surface_points(self, T_links: np.ndarray) -> np.ndarray:
        """All hand surface samples ``(N, 3)`` in the hand frame."""
        return self._posed(T_links, self.surf_pts, self.surf_links)

    def fingertip_points(self, T_links: np.ndarray, offset: float) -> np.ndarray:
        """Fingertip points ``(4, 3)`` in the hand frame (link origin + ``offset`` along the link's z)."""
        Tt = T_links[self.tip_idx]
        return Tt[:, :3, 3] + offset * Tt[:, :3, 2]
