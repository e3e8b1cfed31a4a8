"""The contact map: which hand links touch the object, where, with which normal and how deep.

From the physics prior's view of a posed hand and object (ROS-free): every hand surface sample
(:attr:`HandModel.local_surface_points`, posed by the joint vector) has a signed distance to the
object mesh (Warp SDF, negative inside). A link is **in contact** when one of its samples is within
``threshold`` of the surface (deeper than ``max_penetration``: a wrong pose, ignored). Per link in
contact:

* ``point_obj`` ``(3,)``: the contact point on the object surface, object frame - the mean of the
  link's samples within ``cluster`` of its closest one, each moved onto the surface along the
  SDF normal (``p - d n``), weighted by ``exp(-((d - d_min) / spread)^2)`` (the closest samples
  count most; the point does not depend on ``threshold``, and moves smoothly with the pose);
* ``normal_obj`` ``(3,)``: the object's outward surface normal there (their weighted mean, unit);
* ``distance`` [m]: the signed distance of the link's closest sample (negative = penetration);
* ``state``: ``PENETRATING`` when deeper than ``penetration_tolerance`` inside, else ``TOUCHING``;
* ``point_cam``, ``normal_cam``: the same in the camera frame (at the given object pose), and
  ``point_cov_cam`` ``(3, 3)``: the point's covariance from the pose covariance ``(6, 6)``
  (apply_delta convention: ``dp = v + w x (R p_obj)``).

The synthetic generator's ground truth is the same map at the true joints, camera->hand transform
and object pose with the generator's 1 mm contact threshold (:func:`ground_truth_contacts`), so the
tracker's map can be scored against it (:func:`match_contacts`; ``benchmarks/bench_ekf.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from hp_ros.core.ekf.geometry import skew
from hp_ros.core.ekf.kinematics import HandKinematics

__all__ = ["TOUCHING", "PENETRATING", "STATE_NAMES", "Contact", "ContactMapConfig", "ContactMapper",
           "ground_truth_contacts", "match_contacts"]

TOUCHING, PENETRATING = 0, 1
STATE_NAMES = {TOUCHING: "touching", PENETRATING: "penetrating"}


@dataclass
class ContactMapConfig:
    threshold: float = 0.002              # [m] a link within this of the surface is in contact
    cluster: float = 0.0015               # [m] samples this much farther than the closest make the point
    spread: float = 0.0005                # [m] weight scale of those samples (see the module doc)
    max_penetration: float = 0.02         # [m] deeper samples come from a wrong pose: ignored
    penetration_tolerance: float = 0.0005  # [m] deeper than this inside = PENETRATING


@dataclass
class Contact:
    """One hand link in contact (shapes in the module doc)."""

    link: str
    finger: int                # 0 thumb, 1 index, 2 middle, 3 ring, -1 palm / base
    point_obj: np.ndarray
    normal_obj: np.ndarray
    distance: float
    state: int
    num_samples: int
    point_cam: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    normal_cam: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    point_cov_cam: Optional[np.ndarray] = None


class ContactMapper:
    """Contact maps of ``hand`` (:class:`~hp_ros.core.hand.HandModel`) against the object ``sdf``
    (:class:`~hp_ros.core.sdf.MeshSDF`) with bounding box ``box_lo``, ``box_hi`` ``(3,)`` (object frame)."""

    def __init__(self, hand, sdf, box_lo, box_hi, config: Optional[ContactMapConfig] = None,
                 kinematics: Optional[HandKinematics] = None):
        self.kin = kinematics or HandKinematics(hand)
        self.sdf = sdf
        self.cfg = config or ContactMapConfig()
        self.box_lo, self.box_hi = np.asarray(box_lo, np.float64), np.asarray(box_hi, np.float64)
        self.link_names = list(hand.link_names)
        finger = np.full(len(self.link_names), -1)
        for i, ln in enumerate(self.link_names):
            f = hand.naming.parse_link(ln) if hand.naming is not None else None
            if isinstance(f, tuple):
                finger[i] = f[0]
        self.link_finger = finger

    @classmethod
    def for_object(cls, hand, obj, sdf, config: Optional[ContactMapConfig] = None) -> "ContactMapper":
        v = obj.vertices.double()
        return cls(hand, sdf, v.min(0).values.numpy(), v.max(0).values.numpy(), config)

    def compute(self, q, T_cam_hand: np.ndarray, T_cam_obj: np.ndarray,
                covariance: Optional[np.ndarray] = None) -> list:
        """Contacts (list of :class:`Contact`, link order) of the hand at joints ``q`` ``(J,)`` and
        camera->hand ``T_cam_hand`` ``(4, 4)`` with the object at ``T_cam_obj`` ``(4, 4)``; with the
        pose ``covariance`` ``(6, 6)`` each gets ``point_cov_cam``."""
        T_links = self.kin.forward_kinematics(self.kin.as_q(q))
        p_hand = self.kin.surface_points(T_links)                         # (N, 3) hand frame
        T_oh = np.linalg.inv(T_cam_obj) @ T_cam_hand                       # hand -> object
        p_obj = p_hand @ T_oh[:3, :3].T + T_oh[:3, 3]
        c = self.cfg
        grow = c.threshold + c.cluster
        idx = np.flatnonzero(np.all((p_obj > self.box_lo - grow) & (p_obj < self.box_hi + grow), axis=1))
        if not len(idx):
            return []
        d, n = self.sdf.query(torch.as_tensor(p_obj[idx], dtype=torch.float32)[None])
        d, n = d[0].double().numpy(), n[0].double().numpy()
        valid = d > -c.max_penetration
        links = self.kin.surf_links[idx]
        out = []
        for li in np.unique(links[valid & (d < c.threshold)]):
            sel = valid & (links == li)
            dl, d_min = d[sel], float(d[sel].min())
            close = dl <= d_min + c.cluster
            w = np.exp(-((dl[close] - d_min) / c.spread) ** 2)
            pts = (p_obj[idx][sel] - dl[:, None] * n[sel])[close]
            nrm = w @ n[sel][close]
            nrm /= max(np.linalg.norm(nrm), 1e-12)
            out.append(Contact(self.link_names[li], int(self.link_finger[li]), w @ pts / w.sum(), nrm, d_min,
                               PENETRATING if d_min < -c.penetration_tolerance else TOUCHING,
                               int(np.sum(dl < c.threshold))))
        R, t = T_cam_obj[:3, :3], T_cam_obj[:3, 3]
        for ct in out:
            ct.point_cam, ct.normal_cam = R @ ct.point_obj + t, R @ ct.normal_obj
            if covariance is not None:
                J = np.hstack([np.eye(3), -skew(R @ ct.point_obj)])        # d p_cam / d (v, w)
                ct.point_cov_cam = J @ np.asarray(covariance, np.float64) @ J.T
        return out


def ground_truth_contacts(mapper: ContactMapper, seq, k: int, threshold: float) -> list:
    """The generator's contacts of frame ``k`` of a :class:`~hp_ros.core.synth.SynthSequence`: the
    true joints, camera->hand transform and object pose, hand samples within ``threshold`` (the
    sequence's ``config.contact_threshold``, 1 mm)."""
    cfg = mapper.cfg
    mapper.cfg = ContactMapConfig(threshold, cfg.cluster, cfg.spread, cfg.max_penetration, cfg.penetration_tolerance)
    try:
        return mapper.compute(seq.q_frames_true[k], seq.T_cam_hand_true, seq.T_cam_obj[k])
    finally:
        mapper.cfg = cfg


def match_contacts(estimated: list, truth: list) -> tuple[int, int, int, list]:
    """Per link: ``(true positives, false positives, false negatives, point errors [m] of the true
    positives in the object frame)``."""
    est = {c.link: c for c in estimated}
    gt = {c.link: c for c in truth}
    both = est.keys() & gt.keys()
    err = [float(np.linalg.norm(est[k].point_obj - gt[k].point_obj)) for k in sorted(both)]
    return len(both), len(est.keys() - both), len(gt.keys() - both), err
