"""Hand and object trajectories over time: approach, grasp, lift, in-hand rotation, slips.

Motion (all finger motion; the base never moves)
------------------------------------------------
1. approach (``t < t_grasp``, about 20 % of the sequence, at most 2 s): the object rests still in
   free space in front of the palm; the fingers move from an open pre-shape along a straight
   joint-space path to the grasp configuration (:mod:`.scenario`);
2. hold, then lift (object moved ~1.4 cm away from the palm/upwards by the fingers);
3. in-hand rotation: smooth oscillating rotations (``rotation_amplitude_deg``) about the grasp
   axis and the palm normal, with small translations.
The finger joints come from a damped least-squares IK that moves each finger's contact centroid
with the desired object motion. The **ground-truth object motion is not that desired motion**:
between consecutive frames in contact it is exactly the Kabsch/Procrustes fit (``roma``, no
weights, no scaling) of the contact points (``contact_point_ids``, :mod:`.scenario`) from the
previous to the current hand configuration, in the camera frame — the tracker's quasistatic
model.
Slip events ``(time_s, duration_s, magnitude_m)`` add, on top of the Kabsch motion, a
translation of ``magnitude_m`` spread uniformly over the window, along the object's longest
axis (tangent to the grasped faces), sign random; those frames have ``slip=True``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import _random_unit, _rotvec_to_matrix, _smoothstep, _transform, kabsch
from .scenario import _finger_joint_index, _GraspContacts, _Scenario


@dataclass
class _TimeBase:
    """Sample times (s from the start) of the joint states and the images, and their union."""

    tj: np.ndarray                       # (Nj,) joint-state times
    tf: np.ndarray                       # (Nf,) image times
    t_all: np.ndarray                    # (T,) sorted union of tj and tf
    inv: np.ndarray                      # (Nj + Nf,) index into t_all of each of tj, then tf
    t_grasp: float                       # first image time at or after the grasp (last image if none)

    @property
    def num_joint_states(self) -> int:
        return len(self.tj)


def _time_base(cfg) -> _TimeBase:
    D = float(cfg.duration_s)
    Nj = int(round(D * cfg.joint_rate_hz))
    Nf = int(round(D * cfg.fps))
    tj = np.arange(Nj) / cfg.joint_rate_hz
    tf = np.arange(Nf) / cfg.fps
    t_all, inv = np.unique(np.concatenate([tj, tf]), return_inverse=True)
    t_grasp, _, _ = _timeline(D)
    t_grasp = tf[np.searchsorted(tf, t_grasp)] if np.searchsorted(tf, t_grasp) < Nf else tf[-1]
    return _TimeBase(tj=tj, tf=tf, t_all=t_all, inv=inv, t_grasp=t_grasp)


def _motion_params(rng, cfg) -> dict:
    """The random part of the desired in-hand motion (lift direction, rotation amplitudes,
    frequencies and axes, wiggle), read by :func:`_desired_motion`."""
    return dict(
        lift=np.array([-0.006, 0.0, 0.006]) * rng.uniform(0.8, 1.2),
        a1=math.radians(cfg.rotation_amplitude_deg) * rng.uniform(0.7, 1.0), f1=rng.uniform(0.18, 0.3),
        axis1=np.array([0.0, 0.0, 1.0]),
        a2=math.radians(cfg.rotation_amplitude_deg) * rng.uniform(0.3, 0.6), f2=rng.uniform(0.25, 0.4),
        ph2=rng.uniform(0, 2 * np.pi), axis2=np.array([1.0, 0.0, 0.0]),
        wig=_random_unit(rng) * 0.004, f3=rng.uniform(0.2, 0.5),
    )


def _joint_trajectory(hand, scen: _Scenario, grip: _GraspContacts, tb: _TimeBase, params: dict, cfg):
    """Joint angles at every time of ``tb.t_all``: ``(q_all (T, J), ik_res (K, F, 2) or (0,), scale)``.

    Approach: a smoothstep from ``q_open`` to ``q_grasp``; then the IK that makes the fingers carry
    the object along :func:`_desired_motion`, shrunk by ``scale`` until they can follow it.
    """
    fj = _finger_joint_index(hand)
    D = float(cfg.duration_s)
    q_open, q_grasp = scen.q_open, scen.q_grasp
    ik_fingers, handle_links, handle_local = grip.ik_fingers, grip.handle_links, grip.handle_local
    T_g = grip.T_links_grasp
    t_all, t_grasp = tb.t_all, tb.t_grasp
    t_pre = 0.25 * t_grasp
    q_all = np.tile(q_grasp, (len(t_all), 1))
    pre = t_all < t_grasp
    s = _smoothstep((t_all[pre] - t_pre) / (t_grasp - t_pre))[:, None]
    q_all[pre] = q_open + s * (q_grasp - q_open)
    hold = ~pre
    ik_res = np.zeros(0)
    scale = 0.0
    if hold.any() and ik_fingers:
        # IK on knots every ik_knot_s, joint values in between by a C2 cubic spline
        from scipy.interpolate import CubicSpline

        n_knots = max(4, int(math.ceil((t_all[-1] - t_grasp) / cfg.ik_knot_s)) + 1)
        t_knots = np.linspace(t_grasp, max(t_all[-1], t_grasp + 1e-3), n_knots)
        p_handle0 = np.einsum("fij,fpj->fpi", T_g[handle_links, :3, :3], handle_local) + T_g[handle_links, None, :3, 3]
        centre = p_handle0[:, 0].mean(0)      # rotations about the grip centre, as finger twisting does
        scale = 1.0
        for _ in range(4):                    # shrink the motion until the fingers can follow it
            Tm = _desired_motion(t_knots, centre, params, D, scale)
            targets = np.einsum("bij,fpj->bfpi", Tm[:, :3, :3], p_handle0) + Tm[:, None, None, :3, 3]
            q_knots, ik_res = _ik(hand, q_grasp, handle_links, handle_local, targets, fj, ik_fingers,
                                  weights=(1.0, 0.6))
            if ik_res[..., 0].max() < 1e-3:
                break
            scale *= 0.7
        q_knots[0] = q_grasp
        q_all[hold] = CubicSpline(t_knots, q_knots, axis=0, bc_type="clamped")(t_all[hold])
    return q_all, ik_res, scale


def _object_trajectory(obj, scen: _Scenario, C: np.ndarray, tb: _TimeBase, slips, rng):
    """Ground-truth object poses: the Kabsch chain of the contact samples ``C`` ``(Nf, C, 3)``
    (camera frame) plus the slips. Returns ``(T_cam_obj (Nf, 4, 4), in_contact (Nf,) bool,
    slip (Nf,) bool)``; draws one sign per slip from ``rng``."""
    tf, t_grasp = tb.tf, tb.t_grasp
    Nf = len(tf)
    T_cam_palm, T_palm_obj0 = scen.T_cam_palm, scen.T_palm_obj
    T_cam_obj = np.zeros((Nf, 4, 4))
    in_contact = tf >= t_grasp - 1e-9
    slip = np.zeros(Nf, dtype=bool)
    deltas = kabsch(C[:-1], C[1:]) if Nf > 1 else np.zeros((0, 4, 4))    # frame k-1 -> k
    slip_dir_obj = np.zeros(3)
    ext_axis = np.argmax(obj.vertices.double().numpy().max(0) - obj.vertices.double().numpy().min(0))
    slip_dir_obj[ext_axis] = 1.0
    slip_signs = [rng.choice([-1.0, 1.0]) for _ in slips]
    T_cam_obj[0] = T_cam_palm @ T_palm_obj0
    for k in range(1, Nf):
        T = T_cam_obj[k - 1]
        if in_contact[k] and in_contact[k - 1]:
            T = deltas[k - 1] @ T
        extra = np.zeros(3)
        for (ts, dur, mag), sign in zip(slips, slip_signs):
            a, b = float(ts), float(ts) + float(dur)
            overlap = max(0.0, min(tf[k], b) - max(tf[k - 1], a))
            if overlap > 0 and in_contact[k]:
                extra += sign * float(mag) * overlap / float(dur) * (T[:3, :3] @ slip_dir_obj)
                slip[k] = True
        T = T.copy()
        T[:3, 3] += extra
        T_cam_obj[k] = T
    return T_cam_obj, in_contact, slip


def _penetration_and_contacts(sdf, T_cam_obj: np.ndarray, pts_f: np.ndarray, contact_threshold: float):
    """Physical check per frame of hand samples ``pts_f`` ``(Nf, N, 3)`` (camera frame) against the
    object at ``T_cam_obj``: ``(penetration_mm (Nf,), n_contacts (Nf,))``."""
    p_obj = _transform(np.linalg.inv(T_cam_obj), pts_f)                 # (Nf, N, 3) object frame
    d_all, _ = sdf.query(torch.as_tensor(p_obj, dtype=torch.float32))
    d_all = d_all.numpy()
    penetration_mm = np.maximum(-d_all.min(axis=1), 0.0) * 1e3
    n_contacts = (d_all < contact_threshold).sum(axis=1)
    return penetration_mm, n_contacts


# ============================================================================ desired motion and IK

def _timeline(D: float):
    t_grasp = min(2.0, 0.2 * D)
    t_lift0 = t_grasp + min(0.3, 0.05 * D)
    t_lift1 = t_lift0 + min(1.5, 0.15 * D)
    return t_grasp, t_lift0, t_lift1


def _desired_motion(t: np.ndarray, c0: np.ndarray, rng_params: dict, D: float, scale: float = 1.0) -> np.ndarray:
    """Desired object motion ``(B, 4, 4)`` in the palm frame (relative to the grasp pose)."""
    _, t_l0, t_l1 = _timeline(D)
    p = {k: (v * scale if k in ("lift", "a1", "a2", "wig") else v) for k, v in rng_params.items()}
    lift = _smoothstep((t - t_l0) / max(t_l1 - t_l0, 1e-6))[:, None] * p["lift"][None]
    tr = np.maximum(t - t_l1, 0.0)
    ramp = _smoothstep(tr / min(1.0, max(0.25 * (D - t_l1), 1e-3)))
    rv = ramp[:, None] * (p["a1"] * np.sin(2 * np.pi * p["f1"] * tr)[:, None] * p["axis1"][None]
                          + p["a2"] * np.sin(2 * np.pi * p["f2"] * tr + p["ph2"])[:, None] * p["axis2"][None])
    wiggle = ramp[:, None] * p["wig"][None] * np.sin(2 * np.pi * p["f3"] * tr)[:, None]
    R = _rotvec_to_matrix(rv)
    T = np.tile(np.eye(4), (len(t), 1, 1))
    T[:, :3, :3] = R
    T[:, :3, 3] = c0 + lift + wiggle - (R @ c0)
    return T


def _ik(hand, q_start: np.ndarray, handle_links, handle_local, targets, fj, fingers, weights=(1.0,),
        mu=1e-6, iters=25, max_step=0.15):
    """Damped weighted least-squares IK of P points per finger, batched over B time samples.

    q_start ``(J,)``; handle_links ``(F,)`` link index per IK finger; handle_local ``(F, P, 3)``
    points in that link's frame; targets ``(B, F, P, 3)`` palm frame; weights ``(P,)``.
    Minimises ``sum_p w_p |p_fp(q) - target|^2 + mu |q_f - q_start_f|^2`` per finger within the
    joint limits, with the analytic Jacobian of revolute joints (``axis x (p - joint origin)``).
    Returns q ``(B, J)`` and the residual distances ``(B, F, P)``.
    """
    B = targets.shape[0]
    P = handle_local.shape[1]
    q = np.tile(q_start, (B, 1))
    lo, hi = (x.numpy() for x in hand.joint_limits)
    axes = np.stack([j.axis for j in hand.description.actuated_joints])         # (J, 3) in child frame
    child = np.asarray(hand._joint_child)
    # a joint moves the handle only if its child link is the handle link or one of its ancestors
    parent_of = {j.child: j.parent for j in hand.description.joints}
    names = hand._urdf_link_names
    moves = np.zeros((len(fingers), 4), dtype=bool)
    for i, (f, L) in enumerate(zip(fingers, handle_links)):
        chain, cur = set(), names[L]
        while cur is not None:
            chain.add(cur)
            cur = parent_of.get(cur)
        moves[i] = [names[child[j]] in chain for j in fj[f]]
    w = np.sqrt(np.asarray(weights, dtype=float))[None, :, None]                   # (1, P, 1)
    res = np.zeros((B, len(fingers), P))
    for it in range(iters + 1):
        T = hand.forward_kinematics(torch.as_tensor(q)).numpy()                   # (B, L, 4, 4)
        for i, (f, L) in enumerate(zip(fingers, handle_links)):
            p = np.einsum("bij,pj->bpi", T[:, L, :3, :3], handle_local[i]) + T[:, L, None, :3, 3]  # (B, P, 3)
            err = targets[:, i] - p
            res[:, i] = np.linalg.norm(err, axis=-1)
            if it == iters:
                continue
            jj = fj[f]
            Tc = T[:, child[jj]]                                                   # (B, 4, 4, 4)
            a_w = np.einsum("bkij,kj->bki", Tc[..., :3, :3], axes[jj])              # (B, 4, 3)
            Jf = np.cross(a_w[:, None], p[:, :, None] - Tc[:, None, :, :3, 3])     # (B, P, 4, 3)
            Jf = (Jf * moves[i][None, None, :, None]).transpose(0, 1, 3, 2) * w[..., None]  # (B, P, 3, 4)
            Jf = Jf.reshape(B, 3 * P, 4)
            e = (err * w).reshape(B, 3 * P)
            A = Jf.transpose(0, 2, 1) @ Jf + mu * np.eye(4)
            bvec = (Jf.transpose(0, 2, 1) @ e[..., None])[..., 0] - mu * (q[:, jj] - q_start[jj])
            step = np.linalg.solve(A, bvec[..., None])[..., 0]
            n = np.linalg.norm(step, axis=1, keepdims=True)
            step *= np.minimum(1.0, max_step / np.maximum(n, 1e-12))
            q[:, jj] = np.clip(q[:, jj] + step, lo[jj], hi[jj])
    return q, res
