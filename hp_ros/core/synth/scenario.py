"""The scene of a sequence, fixed before anything moves: where the object sits in the hand and how
the fingers grasp it, where the camera is, the calibration error, and the contact samples.

Scene and frames
----------------
* The hand base (palm link, ``hand.base_link``) is **fixed in the camera frame**:
  ``T_cam_hand_true`` is constant; the camera looks at the palm side from the front-index side
  from ~0.5 m (fingers point up in the image). ``T_cam_hand_published`` = ``T_cam_hand_true @
  E`` with ``E`` a rotation of exactly ``calib_error_rad`` about a random axis and a
  translation of exactly ``calib_error_m`` in a random direction, both in the hand-base frame.
* Object poses ``T_cam_obj`` map object-frame points (the mesh's own frame) into the colour
  optical frame (REP-103).

Grasp
-----
The object rests in free space in front of the palm; the grasp configuration is where each
finger, moving from an open pre-shape along a straight joint-space path, first touches the
object (``min SDF`` of its surface samples in [0, ``grasp_gap``]; no penetration at the grasp
frame). Contact points: the hand surface samples ``hand.surface_points(q)`` with indices
``contact_point_ids`` = all samples within ``contact_threshold`` (1 mm) of the object at the
grasp frame (fixed for the sequence).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import _pose, _random_unit, _rotvec_to_matrix, _transform


@dataclass
class _Scenario:
    """The scene at the grasp frame (palm frame = hand base frame; ``J`` joints, ``N`` hand surface
    samples)."""

    T_palm_obj: np.ndarray               # (4, 4) object pose at the grasp
    centre_palm: np.ndarray              # (3,) object bounding-box centre at the grasp, palm frame
    q_open: np.ndarray                   # (J,) open pre-shape
    q_grasp: np.ndarray                  # (J,) grasp configuration
    contact_fingers: np.ndarray          # (4,) bool, fingers that touch (thumb, index, middle, ring)
    point_finger: np.ndarray             # (N,) finger of each surface sample, -1 palm/base
    T_cam_palm: np.ndarray               # (4, 4) true camera -> hand base
    T_cam_palm_published: np.ndarray     # (4, 4) with the calibration error


@dataclass
class _GraspContacts:
    """The hand samples touching the object at the grasp, and the IK handles that carry them
    (``F`` touching fingers, ``L`` links)."""

    contact_ids: np.ndarray              # (C,) indices into hand.surface_points
    ik_fingers: list                     # (F,) finger index of each handle
    handle_links: list                   # (F,) link index each handle is fixed to
    handle_local: np.ndarray             # (F, 2, 3) handle points in their link's frame
    T_links_grasp: np.ndarray            # (L, 4, 4) link poses at q_grasp, palm frame


def _plan_scenario(hand, obj, sdf, rng, cfg) -> _Scenario:
    """Grasp, camera pose and calibration error (in this order from ``rng``)."""
    T_palm_obj0, q_open, q_grasp, touched, point_finger = _plan_grasp(hand, obj, sdf, rng, cfg)
    c0 = T_palm_obj0[:3, :3] @ (0.5 * (obj.vertices.double().numpy().min(0) + obj.vertices.double().numpy().max(0))) \
        + T_palm_obj0[:3, 3]
    dist = cfg.camera_distance * rng.uniform(0.9, 1.1)
    T_cam_palm = _camera_pose(rng, c0, dist)
    T_cam_palm_pub = T_cam_palm @ _calibration_error(rng, cfg)
    return _Scenario(T_palm_obj=T_palm_obj0, centre_palm=c0, q_open=q_open, q_grasp=q_grasp,
                     contact_fingers=touched, point_finger=point_finger, T_cam_palm=T_cam_palm,
                     T_cam_palm_published=T_cam_palm_pub)


def _calibration_error(rng, cfg) -> np.ndarray:
    """``E`` ``(4, 4)``: a translation of exactly ``calib_error_m`` in a random direction and a
    rotation of exactly ``calib_error_rad`` about a random axis (hand-base frame)."""
    err_t = _random_unit(rng) * cfg.calib_error_m
    err_R = _rotvec_to_matrix(_random_unit(rng) * cfg.calib_error_rad)
    return _pose(err_R, err_t)


def _grasp_contacts(hand, sdf, scen: _Scenario, cfg) -> _GraspContacts:
    """Contact samples at the grasp (all surface samples within ``contact_threshold``) and one IK
    handle per touching finger."""
    T_palm_obj0, q_grasp, point_finger = scen.T_palm_obj, scen.q_grasp, scen.point_finger
    # contact points at the grasp: all surface samples within the threshold
    pts_g = hand.surface_points(torch.as_tensor(q_grasp)[None])[0].numpy()
    d_g, _ = sdf.query(torch.as_tensor(_transform(np.linalg.inv(T_palm_obj0), pts_g), dtype=torch.float32))
    contact_ids = np.nonzero(d_g.numpy() < cfg.contact_threshold)[0]
    if len(contact_ids) < 3:
        raise ValueError(f"only {len(contact_ids)} contact samples at the grasp; need >= 3 (increase n_surface_points?)")
    # IK handles per touching finger: the centroid of its contact samples on its most-touched
    # link, and a second point 1 cm inside the finger along the contact normal (weighted less),
    # which keeps the fingertip from rolling (tilting) on the object surface
    link_ids = hand.point_link_ids.numpy()
    local = hand.local_surface_points.double().numpy()
    _, n_obj = sdf.query(torch.as_tensor(_transform(np.linalg.inv(T_palm_obj0), pts_g), dtype=torch.float32))
    n_palm = n_obj.double().numpy() @ T_palm_obj0[:3, :3].T
    T_g = hand.forward_kinematics(torch.as_tensor(q_grasp)[None])[0].numpy()
    ik_fingers, handle_links, handle_local = [], [], []
    for f in range(4):
        ids = contact_ids[point_finger[contact_ids] == f]
        if len(ids) == 0:
            continue
        links, counts = np.unique(link_ids[ids], return_counts=True)
        L = links[np.argmax(counts)]
        sel = ids[link_ids[ids] == L]
        n_link = T_g[L, :3, :3].T @ n_palm[sel].mean(0)
        n_link /= max(np.linalg.norm(n_link), 1e-12)
        c = local[sel].mean(0)
        ik_fingers.append(f)
        handle_links.append(int(L))
        handle_local.append(np.stack([c, c - 0.01 * n_link]))
    handle_local = np.asarray(handle_local)                                  # (F, 2, 3)
    return _GraspContacts(contact_ids=contact_ids, ik_fingers=ik_fingers, handle_links=handle_links,
                          handle_local=handle_local, T_links_grasp=T_g)


# ============================================================================ grasp synthesis and camera pose

def _finger_joint_index(hand) -> np.ndarray:
    """(4, 4) canonical joint indices [finger, k] (fingers thumb, index, middle, ring)."""
    idx = np.zeros((4, 4), dtype=int)
    for j, name in enumerate(hand.joint_names):
        fk = hand.naming.parse_joint(name)
        if fk is None:
            raise ValueError(f"joint {name!r} does not follow the {hand.naming.scheme} naming")
        idx[fk] = j
    return idx


def _finger_of_link(hand) -> np.ndarray:
    """(L,) finger index of each link (-1 for palm/base)."""
    out = np.full(hand.num_links, -1)
    for i, ln in enumerate(hand.link_names):
        p = hand.naming.parse_link(ln)
        if isinstance(p, tuple):
            out[i] = p[0]
    return out


def _posture(hand, fj, thumb, finger, abduction=(0.0, 0.0, 0.0)) -> np.ndarray:
    q = np.zeros(hand.num_joints)
    q[fj[0]] = thumb
    for f in (1, 2, 3):
        q[fj[f]] = [abduction[f - 1]] + list(finger)
    lo, hi = (x.numpy() for x in hand.joint_limits)
    return np.clip(q, lo, hi)


def _min_sdf_per_finger(hand, sdf, q: np.ndarray, T_palm_obj: np.ndarray, point_finger: np.ndarray):
    """min SDF ``(B, 5)`` over each finger's surface samples (column 4 = palm/base), q ``(B, J)``."""
    pts = hand.surface_points(torch.as_tensor(q))                    # (B, N, 3) palm frame
    p_obj = _transform(np.linalg.inv(T_palm_obj), pts.numpy())
    d, _ = sdf.query(torch.as_tensor(p_obj, dtype=torch.float32))
    d = d.numpy()
    out = np.full((len(q), 5), np.inf)
    for f in range(4):
        out[:, f] = d[:, point_finger == f].min(axis=1)
    palm = point_finger < 0
    if palm.any():
        out[:, 4] = d[:, palm].min(axis=1)
    return out


def _close_fingers(hand, sdf, q_open, q_close, T_palm_obj, point_finger, gap, n_grid=48, n_bisect=18):
    """Per finger, the first s in [0, 1] on q_open + s (q_close - q_open) where it touches (min SDF <= gap).

    Returns (s (4,), touched (4,) bool, min_sdf (5,) at the result).
    """
    fj = _finger_joint_index(hand)
    s_grid = np.linspace(0.0, 1.0, n_grid)
    dq = q_close - q_open
    q = q_open + s_grid[:, None] * dq                                  # every finger at s_k
    d = _min_sdf_per_finger(hand, sdf, q, T_palm_obj, point_finger)[:, :4]
    s = np.ones(4)
    touched = np.zeros(4, dtype=bool)
    lo, hi = np.zeros(4), np.ones(4)
    for f in range(4):
        hit = np.nonzero(d[:, f] <= gap)[0]
        if len(hit):
            k = hit[0]
            touched[f] = True
            if k == 0:
                lo[f] = hi[f] = 0.0
            else:
                lo[f], hi[f] = s_grid[k - 1], s_grid[k]
    for _ in range(n_bisect):                                         # all fingers at once
        mid = 0.5 * (lo + hi)
        qm = q_open.copy()
        for f in range(4):
            qm[fj[f]] += mid[f] * dq[fj[f]]
        dm = _min_sdf_per_finger(hand, sdf, qm[None], T_palm_obj, point_finger)[0, :4]
        inside = dm <= gap
        hi = np.where(touched & inside, mid, hi)
        lo = np.where(touched & ~inside, mid, lo)
    s = np.where(touched, hi, 1.0)
    q_grasp = q_open.copy()
    for f in range(4):
        q_grasp[fj[f]] += s[f] * dq[fj[f]]
    dfin = _min_sdf_per_finger(hand, sdf, q_grasp[None], T_palm_obj, point_finger)[0]
    return q_grasp, s, touched, dfin


def _plan_grasp(hand, obj, sdf, rng, cfg):
    """Object pose in the palm frame and the grasp configuration.

    Orientation: the object's smallest bounding-box extent along the grasp axis (palm z: thumb
    below, fingers above), the largest along palm y (across the fingers), with a random twist
    of +-10 deg about the grasp axis. Position: in front of the palm (1.5 cm clearance),
    centred between the thumb and finger tips of a half-closed reference posture; shifted along
    the grasp axis until the thumb and at least two fingers touch.
    """
    fj = _finger_joint_index(hand)
    point_finger = _finger_of_link(hand)[hand.point_link_ids.numpy()]
    verts = obj.vertices.double().numpy()
    lo_b, hi_b = verts.min(0), verts.max(0)
    ext = hi_b - lo_b
    centre_obj = 0.5 * (lo_b + hi_b)
    order = np.argsort(ext)                 # small, middle, large
    R = np.zeros((3, 3))
    R[2, order[0]] = 1.0                    # palm z <- smallest
    R[1, order[2]] = 1.0                    # palm y <- largest
    R[0, order[1]] = 1.0                    # palm x <- middle
    if np.linalg.det(R) < 0:
        R[0] *= -1.0
    twist = _rotvec_to_matrix(np.array([0.0, 0.0, rng.uniform(-1, 1) * math.radians(10)]))
    R = twist @ R
    ext_palm = np.abs(R) @ ext

    q_open = _posture(hand, fj, thumb=[1.0, 0.05, 0.05, 0.05], finger=[0.05, 0.05, 0.05])
    q_close = _posture(hand, fj, thumb=[1.0, 0.9, 1.3, 1.4], finger=[0.9, 1.5, 1.5])
    q_ref = 0.5 * (q_open + q_close)
    tips = hand.fingertips(torch.as_tensor(q_ref)[None])[0].numpy()
    link_k = np.array([(p[1] if isinstance(p, tuple) else -1)
                       for p in (hand.naming.parse_link(n) for n in hand.link_names)])
    point_k = link_k[hand.point_link_ids.numpy()]
    x_tip = float(tips[1:, 0].mean())
    z_mid = 0.5 * (tips[0, 2] + tips[1:, 2].mean())
    best = None
    # fingertip grasp: the object's near face ~2 cm behind the reference finger tips, so that the
    # distal links (not the proximal phalanges) make the contacts
    for dx, dz in ((0, 0), (0.01, 0), (0, -0.01), (0, 0.01), (0.01, -0.01), (0.01, 0.01), (0.02, 0),
                   (-0.01, 0), (0, -0.02), (0, 0.02), (0.02, -0.02), (0.02, 0.02)):
        c = np.array([x_tip - 0.02 + 0.5 * ext_palm[0] + dx, 0.0, z_mid + dz])
        T_palm_obj = _pose(R, c - R @ centre_obj)
        q_g, s, touched, dmin = _close_fingers(hand, sdf, q_open, q_close, T_palm_obj, point_finger, cfg.grasp_gap)
        pts = hand.surface_points(torch.as_tensor(q_g)[None])[0].numpy()
        d, _ = sdf.query(torch.as_tensor(_transform(np.linalg.inv(T_palm_obj), pts), dtype=torch.float32))
        near = d.numpy() < cfg.contact_threshold
        # a finger is well placed when all its contacts are on its distal links (k >= 2)
        distal = np.array([touched[f] and near[point_finger == f].any()
                           and (point_k[near & (point_finger == f)] >= 2).all() for f in range(4)])
        ok = bool(distal[0] and distal[1:].sum() >= 2 and dmin[4] > cfg.contact_threshold
                  and not (near & ~distal[np.maximum(point_finger, 0)]).any())
        score = (ok, int(distal.sum()), -abs(dx) - abs(dz))
        if best is None or score > best[0]:
            best = (score, T_palm_obj, q_g, distal)
        if ok and distal.sum() == 4:
            break
    (ok, _, _), T_palm_obj, q_grasp, touched = best
    if not ok:
        raise ValueError(f"could not find a fingertip grasp of object {cfg.object!r} (extents {np.round(ext, 3).tolist()} m): "
                         "the thumb and two fingers must reach it; is it a hand-sized object in metres?")
    # fingers that do not make a good contact stay open
    for f in range(4):
        if not touched[f]:
            q_grasp[fj[f]] = q_open[fj[f]]
    return T_palm_obj, q_open, q_grasp, touched, point_finger


def _camera_pose(rng, c_palm: np.ndarray, distance: float) -> np.ndarray:
    """T_cam_palm: camera ``distance`` from the object centre, looking at it from the front-index side,
    palm +z (the fingers) pointing up in the image."""
    a = np.array([0.45, 0.85, 0.25]) / np.linalg.norm([0.45, 0.85, 0.25])
    a = _rotvec_to_matrix(_random_unit(rng) * math.radians(rng.uniform(0, 12))) @ a
    cam = c_palm + distance * a
    z = -a
    y = -np.array([0.0, 0.0, 1.0])
    y = y - z * (y @ z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    T_palm_cam = _pose(np.stack([x, y, z], axis=1), cam)
    return np.linalg.inv(T_palm_cam)
