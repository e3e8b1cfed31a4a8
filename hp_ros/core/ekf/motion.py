"""Process model: the object follows the hand's contacts quasistatically (control input = the
measured joint angles), the bias states are first-order Gauss-Markov, the calibration a random walk.

Per step ``dt``: contact candidates within ``contact_threshold`` of the object surface (on at
least ``min_contact_bodies`` fingers/palm) carry the object with their Kabsch motion ``M``
``(4, 4)`` (hand frame, :func:`hp_ros.core.quasistatic.rigid_motion_from_contacts`); without
contacts it holds still (or keeps its decaying velocity, ``out_of_contact="constant_velocity"``).
``T_hand_obj' = M T_hand_obj``, ``F = blockdiag(R_M, R_M, I6, a_c I3, a_d I6)``, and ``Q`` grows with
time, with the distance / angle travelled and with the residual of the rigid fit (the tuning
notes in :mod:`hp_ros.core.ekf` say why and how much).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hp_ros.core.ekf.geometry import propagate_jacobian, so3_exp, so3_log
from hp_ros.core.ekf.state import StateLayout
from hp_ros.core.quasistatic import ContactMotion, rigid_motion_from_contacts

__all__ = ["ObjectMotion", "PredictStep", "contact_set", "carrying_contacts", "object_motion", "gauss_markov_decay", "transition"]


def contact_set(sdf, p_cand_hand: np.ndarray, T_ho: np.ndarray, cfg, box=None) -> np.ndarray:
    """Bool ``(K,)``: which contact candidates (hand frame ``(K, 3)``) touch the object at ``T_ho``
    (signed distance of the :class:`~hp_ros.core.sdf.MeshSDF` ``sdf`` within the thresholds).
    ``box``: the object's bounding box ``(lo (3,), hi (3,))`` (object frame): only candidates within
    ``contact_threshold`` of it go to the SDF (the others cannot touch it; the query runs every
    joint step, and most of the hand is away from the object). numpy throughout: torch's per-op
    cost on ~450 points was most of this test's time."""
    R, t = T_ho[:3, :3], T_ho[:3, 3]
    p_obj = (p_cand_hand - t) @ R  # R^T (p - t), row-wise
    if box is None:
        near = np.ones(len(p_obj), dtype=bool)
    else:
        m = cfg.contact_threshold
        near = ((p_obj >= box[0] - m) & (p_obj <= box[1] + m)).all(axis=1)
    mask = np.zeros(len(p_obj), dtype=bool)
    idx = np.flatnonzero(near)
    if len(idx):
        d = sdf.distance_numpy(p_obj[idx])
        mask[idx] = (d < cfg.contact_threshold) & (d > -cfg.max_penetration)
    return mask


def carrying_contacts(mask: np.ndarray, body: np.ndarray, min_bodies: int) -> np.ndarray:
    """Indices of the contacts in ``mask`` ``(K,)`` that carry the object: none when they lie on fewer
    than ``min_bodies`` bodies (``body`` ``(K,)``: finger 0-3, -1 palm) - one finger near the object
    (an approach) pushes it, it does not carry it."""
    ids = np.flatnonzero(mask)
    if len(np.unique(body[ids])) < min_bodies:
        ids = ids[:0]
    return ids


@dataclass
class ObjectMotion:
    """One step of the object's motion in the hand frame."""

    contacts: ContactMotion   # the rigid fit of the contacts
    M: np.ndarray             # (4, 4) motion applied: T_ho' = M T_ho
    velocity: np.ndarray      # (6,) hand-frame twist (v, w) per second, for the constant-velocity model
    pos_var: float            # process variance per translation axis [m^2]
    rot_var: float            # ... per rotation axis [rad^2]


@dataclass
class PredictStep:
    """One prediction as it was made, to be made again on another estimate (an out-of-sequence
    update re-runs the frames after it): its input (joint vector ``q`` ``(J,)``, ``dt`` [s]), whether
    it refreshed the contact set (``refreshed``), the motion ``M`` ``(4, 4)`` (None: the step only
    took the first joint vector), ``F``, ``Q`` ``(n, n)``, the bias decay factors, and the filter's
    joint / contact bookkeeping after the step (``aux``: attribute name -> value). The motion and
    ``F`` follow from the hand's joint motion and the contact set, not from the estimate: with the
    same contact set, applying them again equals predicting again."""

    q: np.ndarray
    dt: float
    refreshed: bool
    M: "np.ndarray | None"
    F: "np.ndarray | None"
    Q: "np.ndarray | None"
    a_cb: "float | None"
    a_db: "float | None"
    aux: dict


def object_motion(p_prev: np.ndarray, p_now: np.ndarray, dt: float, velocity: np.ndarray, cfg) -> ObjectMotion:
    """Motion and process noise of the object between two hand configurations, from its contact
    points ``(C, 3)`` (hand frame) at the previous and the current one."""
    c = cfg
    motion = rigid_motion_from_contacts(p_prev, p_now, min_contacts=c.min_contacts, min_spread=c.min_spread)
    M = motion.M
    if motion.n_contacts == 0:
        if c.out_of_contact == "constant_velocity" and dt > 0:
            velocity = velocity * math.exp(-c.velocity_decay * dt)
            M = np.eye(4)
            M[:3, :3] = so3_exp(velocity[3:] * dt)
            M[:3, 3] = velocity[:3] * dt
        elif c.motion_smoothing > 0 and dt > 0:  # held: the smoothed twist fades
            velocity = velocity * math.exp(-dt / c.motion_smoothing)
        sp2 = c.free_pos_random_walk ** 2 * dt
        sr2 = c.free_rot_random_walk ** 2 * dt
    else:
        velocity, trans, ang = _travel(M, dt, velocity, c.motion_smoothing)
        res = c.fit_residual_weight * motion.residual_rms
        # variance proportional to the motion (random walk in distance / angle travelled): the
        # Kabsch-of-contacts error is systematic and accumulates over a motion; a per-step
        # fraction in quadrature would shrink as 1/sqrt(steps) at a higher joint-state rate
        sp2 = c.pos_random_walk ** 2 * dt + c.pos_motion_random_walk ** 2 * trans + res ** 2
        sr2 = c.rot_random_walk ** 2 * dt + c.rot_motion_random_walk ** 2 * ang
        if motion.rotation_ok:
            sr2 += (res / max(motion.spread, 1e-3)) ** 2
        else:  # rotation unobserved by the contacts: it may roll about them (angle ~ travel / spread)
            sr2 += c.rot_motion_random_walk ** 2 * trans / max(motion.spread, 0.01) + c.free_rot_random_walk ** 2 * dt
    return ObjectMotion(motion, M, velocity, sp2, sr2)


def _travel(M: np.ndarray, dt: float, velocity: np.ndarray, smoothing: float) -> tuple:
    """The hand-frame twist per second ``(6,)`` after a step ``M`` ``(4, 4)`` of ``dt`` seconds, and the
    distance [m] and angle [rad] the step counts as travelled for the motion noise.

    ``smoothing`` 0: the step's own twist and its own distance / angle. ``smoothing`` tau > 0: the
    twist is low-pass filtered (first order, time constant tau) and the travel is that smoothed
    twist times ``dt``. White encoder noise makes each step's contact motion jitter back and forth;
    summed per step it is counted as travel (on the lab motion ~0.4-0.55 rad/s of "turning" with
    the object still, measured with noisy against exact joints), but it telescopes: over any
    window the net motion carries one step's jitter, not the sum. The filter keeps ~sigma / tau of
    it (sigma: one step's jitter) and passes motion slower than tau unchanged."""
    if dt <= 0:
        return velocity, float(np.linalg.norm(M[:3, 3])), float(np.linalg.norm(so3_log(M[:3, :3])))
    twist = np.concatenate([M[:3, 3], so3_log(M[:3, :3])]) / dt
    if smoothing <= 0:
        return twist, float(np.linalg.norm(M[:3, 3])), float(np.linalg.norm(twist[3:])) * dt
    velocity = velocity + (-math.expm1(-dt / smoothing)) * (twist - velocity)
    return velocity, float(np.linalg.norm(velocity[:3])) * dt, float(np.linalg.norm(velocity[3:])) * dt


def gauss_markov_decay(dt: float, tau: float) -> float:
    """Decay factor ``a = exp(-dt / tau)`` of a first-order Gauss-Markov state over ``dt``; its
    process variance is ``sigma^2 (1 - a^2)`` (stationary sigma kept)."""
    return math.exp(-dt / tau)


def transition(layout: StateLayout, step: ObjectMotion, dt: float, cfg, center_bias_sigma: np.ndarray,
               depth_bias_sigma: np.ndarray):
    """``F`` ``(n, n)``, ``Q`` ``(n, n)`` of the error state for one step, and the decay factors of the
    centre and depth-fit bias means (None: not decayed)."""
    c, n = cfg, layout.n
    F = np.eye(n)
    F[:6, :6] = propagate_jacobian(step.M)  # x' = M x
    Q = np.zeros((n, n))
    Q[:6, :6] = np.diag([step.pos_var] * 3 + [step.rot_var] * 3)
    a_cb = a_db = None
    if layout.center_bias and c.center_bias_time > 0:
        a_cb = gauss_markov_decay(dt, c.center_bias_time)
        F[layout.cb, layout.cb] *= a_cb
        Q[layout.cb, layout.cb] = np.diag(center_bias_sigma ** 2 * (1.0 - a_cb * a_cb))
    if layout.depth_bias and c.depth_bias_time > 0:
        a_db = gauss_markov_decay(dt, c.depth_bias_time)
        F[layout.db, layout.db] *= a_db
        Q[layout.db, layout.db] = np.diag(depth_bias_sigma ** 2 * (1.0 - a_db * a_db))
    if layout.calibration:
        Q[6:12, 6:12] = np.diag([c.calib_pos_random_walk ** 2 * dt] * 3 + [c.calib_rot_random_walk ** 2 * dt] * 3)
    return F, Q, a_cb, a_db
