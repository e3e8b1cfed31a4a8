"""``generate_sequence``: the scenario, the motion, the sensors and the renders, composed in the
order that fixes the random stream of a seed."""
from __future__ import annotations

import numpy as np
import torch

from .assets import _hand_model, _object_model, _object_sdf, _single_thread_torch
from .data import SynthConfig, SynthSequence
from .lab import fingers_stop_at_surface, lab_motion, push_out_of_hand
from .motion import _joint_trajectory, _motion_params, _object_trajectory, _penetration_and_contacts, _time_base
from .render import _auto_marker_radius, _scene_params, iter_rendered_frames
from .scenario import _grasp_contacts, _plan_scenario
from .sensor import _encoder_readings


def generate_sequence(cfg: SynthConfig) -> SynthSequence:
    """Generate a sequence (see :mod:`hp_ros.core.synth`). Deterministic for a given config (incl. seed)."""
    cfg.validate()
    with _single_thread_torch():
        return _generate(cfg)


def _generate(cfg: SynthConfig) -> SynthSequence:
    hand = _hand_model(None if cfg.hand_urdf is None else str(cfg.hand_urdf), cfg.naming)
    obj = _object_model(str(cfg.object), cfg.object_units)
    sdf = _object_sdf(str(cfg.object), cfg.object_units)
    # one random stream per seed; the steps below draw from it in this order (moving a step
    # changes every sequence): grasp, camera, calibration error, motion, slip signs, encoder
    # noise, appearance. Renders use their own per-frame streams.
    rng = np.random.default_rng(cfg.seed)

    # ---- scene: grasp, camera, calibration error, contacts --------------------------------
    scen = _plan_scenario(hand, obj, sdf, rng, cfg)
    grip = _grasp_contacts(hand, sdf, scen, cfg)

    # ---- motion: joints, then the object carried by the contacts --------------------------
    tb = _time_base(cfg)
    params = _motion_params(rng, cfg)
    Nj = tb.num_joint_states
    T_cam_palm = scen.T_cam_palm
    lab = None
    if cfg.motion == "lab":   # moving hand base, gaiting, object motion not from the contacts (.lab)
        lab = lab_motion(hand, obj, sdf, scen, grip, tb, params, rng, cfg)
        q_all, ik_res, scale = lab["q_all"], lab["ik_res"], 1.0
        base = torch.as_tensor(lab["T_cam_hand_frames"])
    else:
        q_all, ik_res, scale = _joint_trajectory(hand, scen, grip, tb, params, cfg)
        base = torch.as_tensor(T_cam_palm)[None]
    q_joint_true = q_all[tb.inv[:Nj]]
    q_frames = q_all[tb.inv[Nj:]]
    pts_f = hand.surface_points(torch.as_tensor(q_frames), base=base).numpy()  # (Nf, N, 3)
    if lab is None:
        T_cam_obj, in_contact, slip = _object_trajectory(obj, scen, pts_f[:, grip.contact_ids], tb, cfg.slips, rng)
    else:
        T_cam_obj, in_contact, slip = lab["T_cam_obj"], lab["in_contact"], lab["slip"]
        T_cam_obj = push_out_of_hand(sdf, T_cam_obj, pts_f)   # the fingers push the object, not through it
        # ... and where they squeeze it from both sides they stop at its surface (joint angles at the
        # frames corrected, interpolated between them for the joint states)
        dq = fingers_stop_at_surface(hand, sdf, q_frames, base, T_cam_obj)
        q_all = q_all + np.stack([np.interp(tb.t_all, tb.tf, dq[:, j]) for j in range(dq.shape[1])], -1)
        q_joint_true, q_frames = q_all[tb.inv[:Nj]], q_all[tb.inv[Nj:]]
        pts_f = hand.surface_points(torch.as_tensor(q_frames), base=base).numpy()
    penetration_mm, n_contacts = _penetration_and_contacts(sdf, T_cam_obj, pts_f, cfg.contact_threshold)

    # ---- published joint states ----------------------------------------------------------
    q_pub = _encoder_readings(q_joint_true, cfg, rng)

    # ---- fingertips in the image ---------------------------------------------------------
    tips = hand.fingertips(torch.as_tensor(q_frames), base=base).numpy()
    K = cfg.K
    uv = tips @ K.T
    tips_px = uv[..., :2] / uv[..., 2:3]

    # ---- scene appearance (per seed) -------------------------------------------------------
    scene = _scene_params(rng, cfg, scen.centre_palm, T_cam_palm)
    marker_radius = cfg.marker_radius if cfg.marker_radius is not None else _auto_marker_radius(hand)

    start = int(cfg.start_time_ns)
    seq = SynthSequence(
        config=cfg, joint_names=list(hand.joint_names),
        joint_stamps_ns=start + np.round(tb.tj * 1e9).astype(np.int64), joint_positions=q_pub,
        joint_positions_true=q_joint_true, frame_stamps_ns=start + np.round(tb.tf * 1e9).astype(np.int64),
        q_frames_true=q_frames, T_cam_obj=T_cam_obj, T_cam_hand_true=T_cam_palm,
        T_cam_hand_published=scen.T_cam_palm_published, K=K, width=int(cfg.width), height=int(cfg.height),
        in_contact=in_contact, slip=slip, fingertips_px_true=tips_px, fingertips_cam_true=tips,
        contact_point_ids=grip.contact_ids, contact_fingers=scen.contact_fingers, penetration_mm=penetration_mm,
        n_contacts=n_contacts, hand_frame=hand.base_link,
        marker_colors=np.asarray(cfg.marker_colors, float), marker_radius=float(marker_radius), scene=scene,
    )
    if lab is not None:
        seq.T_cam_hand_frames, seq.T_cam_hand_frames_published = lab["T_cam_hand_frames"], lab["T_cam_hand_frames_published"]
        seq.tf_stamps_ns, seq.T_world_hand_tf, seq.T_cam_world = seq.joint_stamps_ns.copy(), lab["T_world_hand_tf"], T_cam_palm
        seq.scene["lab"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in lab["lab"].items()}
    seq.scene["ik_residual_max_m"] = float(ik_res[..., 0].max()) if ik_res.size else 0.0
    seq.scene["motion_scale"] = float(scale)
    if cfg.render:
        frames = list(iter_rendered_frames(seq))
        seq.rgb = np.stack([f["rgb"] for f in frames])
        seq.depth_mm = np.stack([f["depth_mm"] for f in frames])
        seq.object_mask = np.stack([f["object_mask"] for f in frames])
        seq.hand_mask = np.stack([f["hand_mask"] for f in frames])
    return seq
