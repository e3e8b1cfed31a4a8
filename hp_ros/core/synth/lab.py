"""Motion ``lab``: what a lab's in-hand manipulation looks like to a fixed camera.

* **The arm carries the hand.** The hand base moves in the world (= the hand base at t = 0; the
  camera is fixed in it): after the lift, min-jerk moves between random waypoints, a path of
  ``arm_path_m`` (10-30 cm drawn per seed) kept inside a box of +-8 cm (camera x, y) and +-6 cm
  (depth) around the start so the object stays in view, with orientations up to
  ``arm_max_angle_deg`` about the object's grasp centre; each move is slow enough that the hand
  stays under ``arm_max_speed`` (0.3 m/s) and ``arm_max_rate_deg`` (60 deg/s) at its peak.
* **In-hand rotation by finger gaiting.** A total of ``gait_total_deg`` (30-90 deg per seed)
  about the grasp axis (palm z, thumb against fingers) in strokes of at most 15 deg: in a stroke's
  carry phase the touching fingers twist the object by the stroke angle; in its regrasp phase
  they lift off one at a time (1.5 cm along the grasp axis), move back and touch down again while
  the object stays where it is.
* **The object's motion is not the tracker's model.** The object follows the commanded motion
  (lift + gait strokes) plus a smooth random deviation (an Ornstein-Uhlenbeck process of ~0.8 mm
  and ~1 deg, time constant 0.4 s: rolling and compliance of the soft fingertips) plus slips;
  the fingers follow the command by IK as well as they can. Nothing here fits the contacts
  (the classic motion's Kabsch chain is the tracker's own quasistatic model).
* **Slips.** ``cfg.slips`` when given, else one or two random slips of 4-10 mm over 0.15-0.3 s.
* **The fingers push, they do not pass through.** The commanded motion, its deviation and the
  slips take no account of where the fingers are (the regrasp strokes sweep them past a turning
  box's corners, IK misses its targets), so the object is then moved out of the hand
  (:func:`push_out_of_hand`: per frame the smallest translation that takes the penetrating hand
  samples back to its surface, a penalty contact's static answer).
* **/tf.** The published world -> hand base at the joint-state stamps (a robot_state_publisher
  on the arm's joint states) carries the calibration error ``E`` (hand frame, constant: the
  mount of the hand on the flange) and white noise of ``tf_noise_m`` / ``tf_noise_rad``; the camera
  -> world transform (``/tf_static``) is exact.
"""
from __future__ import annotations

import math

import numpy as np

from .geometry import _pose, _random_unit, _rotvec_to_matrix, _smoothstep

STROKE_MAX_DEG = 15.0


def _min_jerk(x):
    x = np.clip(x, 0.0, 1.0)
    return x ** 3 * (10.0 - 15.0 * x + 6.0 * x * x)


def _lab_params(rng, cfg, T_cam_world: np.ndarray, c0_palm: np.ndarray, t_start: float) -> dict:
    """The random part of a lab sequence (arm waypoints, gait, OU noise, slips), drawn from ``rng``."""
    D = float(cfg.duration_s)
    R_wc = T_cam_world[:3, :3].T                      # camera axes in the world (= hand base at t = 0)
    box = np.array([0.08, 0.08, 0.06])
    path = rng.uniform(0.10, 0.30)
    pos, rot = [np.zeros(3)], [np.zeros(3)]
    length = 0.0
    while length < path - 1e-6:
        for _ in range(50):
            step = min(rng.uniform(0.05, 0.12), path - length + 1e-3)
            d_cam = _random_unit(rng) * step
            p_cam = R_wc.T @ pos[-1] + d_cam
            if np.all(np.abs(p_cam) <= box):
                break
        else:
            p_cam = R_wc.T @ pos[-1] - d_cam
        pos.append(R_wc @ p_cam)
        rot.append(_random_unit(rng) * math.radians(rng.uniform(5.0, cfg.arm_max_angle_deg)))
        length += float(np.linalg.norm(pos[-1] - pos[-2]))
    # segment durations: min-jerk peak speed = 1.875 * distance / duration (+ rotation about c0)
    durs = []
    for k in range(1, len(pos)):
        d = np.linalg.norm(pos[k] - pos[k - 1])
        a = np.linalg.norm(rot[k] - rot[k - 1])
        T = 1.875 * max(d / (0.8 * cfg.arm_max_speed), a / math.radians(0.8 * cfg.arm_max_rate_deg), 0.05)
        durs.append(T + rng.uniform(0.1, 0.4))        # + a pause
    avail = max(D - t_start - 0.3, 0.5)
    total = sum(durs)
    if total > avail:                                  # keep the limits: cut the path, do not speed up
        keep = int(np.searchsorted(np.cumsum(durs), avail)) or 1
        pos, rot, durs = pos[:keep + 1], rot[:keep + 1], durs[:keep]
    gait = math.radians(rng.uniform(30.0, 90.0))
    n_slips = int(rng.integers(1, 3))
    slips = cfg.slips or [(rng.uniform(t_start, max(t_start, D - 0.5)), rng.uniform(0.15, 0.3), rng.uniform(0.004, 0.010))
                          for _ in range(n_slips)]
    return dict(t_start=t_start, waypoints=np.array(pos), rotvecs=np.array(rot), durations=np.array(durs),
                path_m=float(sum(np.linalg.norm(np.diff(np.array(pos), axis=0), axis=1))),
                centre=np.asarray(c0_palm, float), gait_rad=gait,
                ou_seed=int(rng.integers(2 ** 31)), slips=[tuple(map(float, s)) for s in slips])


def arm_trajectory(t: np.ndarray, p: dict) -> np.ndarray:
    """World -> hand base ``(T, 4, 4)`` at times ``t`` ``(T,)`` (s): min-jerk moves between the
    waypoints, rotations about the grasp centre ``p["centre"]`` (hand frame at t = 0)."""
    out = np.tile(np.eye(4), (len(t), 1, 1))
    t0 = p["t_start"]
    ends = t0 + np.cumsum(p["durations"])
    starts = ends - p["durations"]
    c = p["centre"]
    for i, ti in enumerate(t):
        k = int(np.searchsorted(ends, ti))
        if k >= len(ends):
            pos, rv = p["waypoints"][-1], p["rotvecs"][-1]
        elif ti <= starts[k]:
            pos, rv = p["waypoints"][k], p["rotvecs"][k]
        else:
            s = _min_jerk((ti - starts[k]) / max(p["durations"][k] - 0.0, 1e-6))
            pos = p["waypoints"][k] + s * (p["waypoints"][k + 1] - p["waypoints"][k])
            rv = p["rotvecs"][k] + s * (p["rotvecs"][k + 1] - p["rotvecs"][k])
        R = _rotvec_to_matrix(rv)
        out[i] = _pose(R, pos + c - R @ c)             # rotate about c, then translate
    return out


def gait_angles(t: np.ndarray, p: dict, n_fingers: int, D: float):
    """Object angle ``(T,)`` and per-finger angle and lift fraction ``(T, F)`` of the gait at ``t``.

    Stroke k over ``[a_k, a_k + P)``: carry in the first 55 % (object and every finger turn by the
    stroke angle together, in the stroke's direction ``p["stroke_signs"][k]``), then each finger in
    turn lifts, turns back and touches down.
    """
    a0 = p["t_start"]
    P = max(D - 0.2 - a0, 0.1) / p["n_strokes"]
    d = p["gait_rad"] / p["n_strokes"]
    u = np.clip((t - a0) / P, 0.0, p["n_strokes"])
    k = np.minimum(np.floor(u), p["n_strokes"] - 1).astype(int)
    f = u - k                                          # phase in the stroke, 0..1
    carry = _smoothstep(f / 0.55)
    sgn = np.asarray(p["stroke_signs"], float)
    before = np.concatenate([[0.0], np.cumsum(sgn)])[k]
    theta_obj = d * (before + sgn[k] * carry)
    fin = np.zeros((len(t), n_fingers))
    lift = np.zeros((len(t), n_fingers))
    w = 0.45 / n_fingers
    for i in range(n_fingers):
        g = np.clip((f - 0.55 - i * w) / w, 0.0, 1.0)
        back = _smoothstep(g)
        fin[:, i] = sgn[k] * d * (carry - back)        # relative to the grasp, within +-d
        lift[:, i] = np.sin(np.pi * g) ** 2
    done = u >= p["n_strokes"]
    fin[done] = 0.0
    return theta_obj, fin, lift


def ou_deviation(t: np.ndarray, seed: int, pos_sigma=0.0008, rot_sigma=math.radians(1.0), tau=0.4) -> np.ndarray:
    """Smooth random deviation ``(T, 6)`` (translation m, rotation vector rad): an Ornstein-Uhlenbeck
    process of stationary std ``pos_sigma`` / ``rot_sigma`` and time constant ``tau``, started at 0."""
    rng = np.random.default_rng([seed, 5151])
    x = np.zeros((len(t), 6))
    sig = np.array([pos_sigma] * 3 + [rot_sigma] * 3)
    for i in range(1, len(t)):
        a = math.exp(-(t[i] - t[i - 1]) / tau)
        x[i] = a * x[i - 1] + sig * math.sqrt(1 - a * a) * rng.normal(size=6)
    return x


def object_in_palm(t: np.ndarray, p: dict, lift_T: np.ndarray, theta_obj: np.ndarray, T_palm_obj0: np.ndarray,
                   slip_dir_obj: np.ndarray) -> tuple:
    """Ground-truth object pose in the palm frame ``(T, 4, 4)`` and the slip flags ``(T,)``:
    lift ``lift_T`` ``(T, 4, 4)`` o gait rotation (palm z about the grasp centre) o OU deviation, plus
    the slips along the object's ``slip_dir_obj`` ``(3,)``."""
    c = p["centre"]
    dev = ou_deviation(t, p["ou_seed"])
    ramp = _smoothstep((t - p["t_start"] + 1.0) / 1.0)[:, None]    # no deviation before the grasp
    dev = dev * ramp
    out = np.empty((len(t), 4, 4))
    slip = np.zeros(len(t), bool)
    signs = [(-1.0) ** (i + p["ou_seed"]) for i in range(len(p["slips"]))]
    for i, ti in enumerate(t):
        Rg = _rotvec_to_matrix(np.array([0.0, 0.0, theta_obj[i]]))
        Rd = _rotvec_to_matrix(dev[i, 3:])
        G = _pose(Rd @ Rg, c + dev[i, :3] - Rd @ Rg @ c)
        T = lift_T[i] @ G @ T_palm_obj0
        s = 0.0
        for (ts, dur, mag), sign in zip(p["slips"], signs):
            s += sign * mag * float(np.clip((ti - ts) / dur, 0.0, 1.0))
            slip[i] |= ts <= ti < ts + dur
        T[:3, 3] += s * (T[:3, :3] @ slip_dir_obj)
        out[i] = T
    return out, slip


def lab_joint_trajectory(hand, scen, grip, tb, params: dict, lab: dict, cfg):
    """Joint angles ``(T, J)`` at ``tb.t_all`` for the gait (approach as in the classic motion), the IK
    residuals ``(K, F, 2)`` and the grip centre ``(3,)`` (palm frame) the strokes turn about.

    Each touching finger's IK handles follow the lift, its own gait angle about the grasp axis
    through the grip centre and, while it regrasps, a lift-off of 1.5 cm along the grasp axis.
    """
    from scipy.interpolate import CubicSpline

    from .motion import _desired_motion, _finger_joint_index, _ik

    D = float(cfg.duration_s)
    t_all, t_grasp = tb.t_all, tb.t_grasp
    q_open, q_grasp = scen.q_open, scen.q_grasp
    T_g = grip.T_links_grasp
    hl, hloc = grip.handle_links, grip.handle_local
    q_all = np.tile(q_grasp, (len(t_all), 1))
    pre = t_all < t_grasp
    t_pre = 0.25 * t_grasp
    q_all[pre] = q_open + _smoothstep((t_all[pre] - t_pre) / (t_grasp - t_pre))[:, None] * (q_grasp - q_open)
    p0 = np.einsum("fij,fpj->fpi", T_g[hl, :3, :3], hloc) + T_g[hl, None, :3, 3]        # (F, 2, 3)
    centre = p0[:, 0].mean(0)
    hold = ~pre
    if not hold.any() or not grip.ik_fingers:
        return q_all, np.zeros(0), centre
    n_knots = max(4, int(math.ceil((t_all[-1] - t_grasp) / min(cfg.ik_knot_s, 0.025))) + 1)
    tk = np.linspace(t_grasp, max(t_all[-1], t_grasp + 1e-3), n_knots)
    lift_T = _desired_motion(tk, centre, dict(params, a1=0.0, a2=0.0, wig=np.zeros(3)), D)   # (K, 4, 4)
    F = len(grip.ik_fingers)
    _, fin, up = gait_angles(tk, lab, F, D)                                               # (K, F)
    side = np.sign(p0[:, 0, 2] - centre[2])                                              # +1 fingers, -1 thumb
    R = _rotvec_to_matrix(np.stack([np.zeros_like(fin), np.zeros_like(fin), fin], -1))    # (K, F, 3, 3)
    p_rot = np.einsum("kfij,fpj->kfpi", R, p0 - centre) + centre
    p_rot[..., 2] += (0.015 * up * side[None])[..., None]
    targets = np.einsum("kij,kfpj->kfpi", lift_T[:, :3, :3], p_rot) + lift_T[:, None, None, :3, 3]
    fj = _finger_joint_index(hand)
    q_k, ik_res = _ik(hand, q_grasp, hl, hloc, targets, fj, grip.ik_fingers, weights=(1.0, 0.6))
    q_k[0] = q_grasp
    q_all[hold] = CubicSpline(tk, q_k, axis=0, bc_type="clamped")(t_all[hold])
    return q_all, ik_res, centre


def _published_tf(T_wh_j: np.ndarray, E: np.ndarray, rng, cfg) -> np.ndarray:
    """``(Nj, 4, 4)`` world -> hand base as /tf publishes it: the mount error ``E`` and white noise."""
    n = len(T_wh_j)
    R = _rotvec_to_matrix(rng.normal(size=(n, 3)) * cfg.tf_noise_rad)
    J = np.tile(np.eye(4), (n, 1, 1))
    J[:, :3, :3] = R
    J[:, :3, 3] = rng.normal(size=(n, 3)) * cfg.tf_noise_m
    return T_wh_j @ E @ J


def _at_times(t_src: np.ndarray, T_src: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Poses ``T_src`` ``(N, 4, 4)`` at ``t_src`` interpolated at ``t`` (held at the ends)."""
    from hp_ros.core.tf_buffer import interpolate_pose

    i = np.clip(np.searchsorted(t_src, t), 1, len(t_src) - 1)
    a = np.clip((t - t_src[i - 1]) / (t_src[i] - t_src[i - 1]), 0.0, 1.0)
    return np.stack([interpolate_pose(T_src[j - 1], T_src[j], float(x)) for j, x in zip(i, a)])


def lab_motion(hand, obj, sdf, scen, grip, tb, params: dict, rng, cfg) -> dict:
    """Everything that moves in a lab sequence (draws the lab parameters, then the /tf noise, from ``rng``):
    ``q_all`` ``(T, J)``, ``ik_res``, ``T_cam_obj`` ``(Nf, 4, 4)``, ``in_contact`` / ``slip`` ``(Nf,)``,
    ``T_cam_hand_frames`` (true) and ``T_cam_hand_frames_published`` ``(Nf, 4, 4)``, ``T_world_hand_tf``
    ``(Nj, 4, 4)`` (published at the joint-state stamps) and ``lab`` (the parameters)."""
    from .motion import _desired_motion, _timeline

    D = float(cfg.duration_s)
    _, _, t_l1 = _timeline(D)
    lab = _lab_params(rng, cfg, scen.T_cam_palm, scen.centre_palm, t_l1)
    lab.update(_stroke_plan(lab["gait_rad"], _gait_limits(hand, sdf, scen, grip)))
    q_all, ik_res, grip_centre = lab_joint_trajectory(hand, scen, grip, tb, params, lab, cfg)
    Nj = tb.num_joint_states
    T_wh_all = arm_trajectory(tb.t_all, lab)
    T_wh_f, T_wh_j = T_wh_all[tb.inv[Nj:]], T_wh_all[tb.inv[:Nj]]
    tf = tb.tf
    lift_T = _desired_motion(tf, grip_centre, dict(params, a1=0.0, a2=0.0, wig=np.zeros(3)), D)
    theta, _, _ = gait_angles(tf, lab, 1, D)
    v = obj.vertices.double().numpy()
    slip_dir = np.zeros(3)
    slip_dir[np.argmax(v.max(0) - v.min(0))] = 1.0
    T_palm_obj, slip = object_in_palm(tf, dict(lab, centre=grip_centre), lift_T, theta, scen.T_palm_obj, slip_dir)
    T_cam_hand_f = scen.T_cam_palm @ T_wh_f
    E = np.linalg.inv(scen.T_cam_palm) @ scen.T_cam_palm_published
    T_wh_tf = _published_tf(T_wh_j, E, rng, cfg)
    T_cam_hand_pub = scen.T_cam_palm @ _at_times(tb.tj, T_wh_tf, tf)
    return dict(q_all=q_all, ik_res=ik_res, T_cam_obj=T_cam_hand_f @ T_palm_obj, in_contact=tf >= tb.t_grasp - 1e-9,
                slip=slip, T_cam_hand_frames=T_cam_hand_f, T_cam_hand_frames_published=T_cam_hand_pub,
                T_world_hand_tf=T_wh_tf, lab=lab)


def push_out_of_hand(sdf, T_cam_obj: np.ndarray, pts_f: np.ndarray, tolerance: float = 0.0005,
                     iterations: int = 6) -> np.ndarray:
    """Object poses ``(Nf, 4, 4)`` moved out of the hand: per frame, hand samples ``pts_f``
    ``(Nf, N, 3)`` (camera frame) deeper than ``tolerance`` inside the object at ``T_cam_obj``
    ``(Nf, 4, 4)`` are pushed back to its surface by a translation: the least-squares one on their
    signed distances (the SDF's normals), lengthened until the deepest is out, ``iterations``
    times. Frames without
    penetration are unchanged. A squeeze from opposite sides cannot be undone by a translation and
    is left balanced between them."""
    import torch

    from .geometry import _transform

    T = np.array(T_cam_obj, dtype=np.float64, copy=True)
    for _ in range(iterations):
        p_obj = _transform(np.linalg.inv(T), pts_f)                          # (Nf, N, 3)
        d, n = sdf.query(torch.as_tensor(p_obj, dtype=torch.float32))
        d, n = d.double().numpy(), n.double().numpy()
        w = (d < -tolerance).astype(np.float64)                              # (Nf, N)
        if not w.any():
            break
        n_cam = np.einsum("fij,fnj->fni", T[:, :3, :3], n)                   # normals in the camera
        # moving the object by t changes a fixed point's distance by -n.t: solve n.t = d (to 0)
        # damped (a face's samples leave the directions along it free)
        A = np.einsum("fn,fni,fnj->fij", w, n_cam, n_cam) + (0.05 * w.sum(1) + 1e-9)[:, None, None] * np.eye(3)
        b = np.einsum("fn,fni,fn->fi", w, n_cam, d)
        u = np.linalg.solve(A, b[..., None])[..., 0]                         # (Nf, 3) least squares
        # lengthened so that the deepest sample it moves away from reaches the surface (the least
        # squares step takes the mean depth out)
        nu = np.einsum("fni,fi->fn", n_cam, u)
        ratio = np.where((w > 0) & (nu < -1e-12), d / np.where(nu < -1e-12, nu, -1.0), 1.0)
        alpha = np.clip(ratio.max(1), 1.0, 4.0)
        T[:, :3, 3] += (alpha * w.any(1))[:, None] * u
    return T


def fingers_stop_at_surface(hand, sdf, q_frames: np.ndarray, base, T_cam_obj: np.ndarray,
                            tolerance: float = 0.0005, iterations: int = 15, max_step: float = 0.1) -> np.ndarray:
    """Joint corrections ``(Nf, J)`` that take the fingers out of the object where a translation
    could not (:func:`push_out_of_hand` leaves a squeeze from opposite sides balanced): a finger
    under position control with a compliant tip stops at the surface instead of passing into it.

    ``q_frames`` ``(Nf, J)`` joint angles at the frames, ``base`` ``(Nf or 1, 4, 4)`` camera -> hand
    base (tensor), ``T_cam_obj`` ``(Nf, 4, 4)``. Per frame a few Gauss-Newton steps on the
    penetration depths (deeper than ``tolerance``) of the samples a joint can move, each joint's step
    at most ``max_step`` rad, inside the joint limits. Frames without penetration get zeros.
    """
    import torch

    q0 = torch.as_tensor(q_frames, dtype=torch.float64)
    base = torch.as_tensor(base, dtype=torch.float64)
    # samples on links no joint moves (the palm) are left to push_out_of_hand
    probe = hand.surface_points(q0[:1], base=base[:1])
    moved = hand.surface_points(hand.clamp(q0[:1] + 0.05), base=base[:1])
    movable = ((moved - probe).norm(dim=-1)[0] > 1e-6).to(torch.float64)              # (N,)
    T_oc = torch.as_tensor(np.linalg.inv(T_cam_obj), dtype=torch.float64)
    q = q0.clone()
    base = base.expand(len(q0), 4, 4)
    active = torch.ones(len(q0), dtype=torch.bool)                                     # frames still inside
    for _ in range(iterations):
        idx = active.nonzero()[:, 0]
        qv = q[idx].clone().requires_grad_(True)
        pts = hand.surface_points(qv, base=base[idx])                                   # (n, N, 3)
        T_i = T_oc[idx]
        p_obj = pts @ T_i[:, :3, :3].transpose(1, 2) + T_i[:, None, :3, 3]
        d, _ = sdf.query(p_obj.float())
        pen = torch.relu(-d.double() - tolerance) * movable                             # (n, N)
        loss = 0.5 * (pen ** 2).sum(1)                                                  # (n,)
        active[idx] = loss > 1e-12
        if not bool(active.any()):
            break
        (g,) = torch.autograd.grad(loss.sum(), qv)                                      # (n, J), per frame
        with torch.no_grad():
            # a Gauss-Newton step for the summed squares (exact for one sample in a linear model)
            step = -(2.0 * loss / (g * g).sum(1).clamp_min(1e-12))[:, None] * g
            q[idx] = hand.clamp(q[idx] + step.clamp(-max_step, max_step))
    return (q - q0).numpy()


def _grip_centre(grip) -> np.ndarray:
    T_g, hl = grip.T_links_grasp, grip.handle_links
    return (np.einsum("fij,fj->fi", T_g[hl, :3, :3], grip.handle_local[:, 0]) + T_g[hl, :3, 3]).mean(0)


def _gait_limits(hand, sdf, scen, grip, max_pen: float = 0.002, step_deg: float = 5.0) -> tuple:
    """How far the object can turn about the grasp axis (through the grip centre) each way before the
    hand at its grasp configuration penetrates it by more than ``max_pen``: ``(positive, negative)``
    rad, multiples of ``step_deg`` up to 90 deg (a large box soon hits the palm; gaiting stays inside)."""
    import torch

    from .geometry import _transform

    c = _grip_centre(grip)
    pts = hand.surface_points(torch.as_tensor(scen.q_grasp)[None])[0].numpy()
    out = []
    for sign in (1.0, -1.0):
        lim = 0.0
        for deg in np.arange(step_deg, 90.0 + 1e-9, step_deg):
            R = _rotvec_to_matrix(np.array([0.0, 0.0, sign * math.radians(deg)]))
            T = _pose(R, c - R @ c) @ scen.T_palm_obj
            d, _ = sdf.query(torch.as_tensor(_transform(np.linalg.inv(T), pts), dtype=torch.float32))
            if -float(d.min()) > max_pen:
                break
            lim = math.radians(deg)
        out.append(lim)
    return tuple(out)


def _stroke_plan(total: float, limits: tuple) -> dict:
    """Strokes of at most 15 deg travelling ``total`` rad, turning back at the limits ``(pos, neg)``:
    ``{"n_strokes", "stroke_signs" (list of +-1), "gait_limits_rad"}``. Starts towards the wider side."""
    pos, neg = limits
    d_max = min(math.radians(STROKE_MAX_DEG), max(pos, neg, math.radians(5.0)))
    n = max(2, int(math.ceil(total / d_max - 1e-9)))
    d = total / n
    sign = 1.0 if pos >= neg else -1.0
    angle, signs = 0.0, []
    for _ in range(n):
        lim = pos if sign > 0 else neg
        if abs(angle + sign * d) > lim + 1e-9 and abs(angle - sign * d) <= (neg if sign > 0 else pos) + 1e-9:
            sign = -sign
        signs.append(sign)
        angle += sign * d
    return {"n_strokes": n, "stroke_signs": signs, "gait_limits_rad": [pos, neg]}
