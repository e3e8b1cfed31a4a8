"""``hp-ros eval``'s baselines: ``frozen`` and ``hand_only`` (:mod:`hp_ros.core.baselines`) from what
the bag itself holds - ``/joint_states``, ``/tf_static`` and ``/tf`` (camera -> hand base at each
ground-truth stamp, interpolated in a :class:`hp_ros.core.tf_buffer.TransformBuffer`) - started
from the first estimate (the pose the tracker published first; its initial pose is not in the bag).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def _bag_inputs(bag: str | Path, hand, camera_frame: str, hand_frame: str, stamps: np.ndarray):
    """``(q (N, J), T_cam_hand (N, 4, 4))`` at ``stamps`` from the bag, or None when it lacks them."""
    from hp_ros.core import baselines
    from hp_ros.core.ekf.hand_base import HandBaseTrack
    from hp_ros.core.tf_buffer import TransformBuffer
    from hp_ros.io import bag as B
    from hp_ros.io import msgs

    have = B.bag_summary(bag).topics
    if B.TOPIC_JOINT_STATES not in have:
        return None
    buf = TransformBuffer(cache_time_s=1e6, max_frames=4096)
    mapper = hand.joint_state_mapper()
    js, qs = [], []
    topics = [t for t in (B.TOPIC_JOINT_STATES, B.TOPIC_TF, B.TOPIC_TF_STATIC) if t in have]
    for topic, _, _, m in B.read_bag(bag, topics=topics):
        if topic == B.TOPIC_JOINT_STATES:
            q = mapper.update(list(m.name), list(m.position))
            if q is not None:
                js.append(msgs.header_stamp_ns(m))
                qs.append(np.asarray(q, dtype=np.float64))
            continue
        for t in m.transforms:
            T, parent, child, stamp = msgs.transform_stamped_to_matrix(t)
            buf.set_transform(T, parent, child, stamp, static=topic == B.TOPIC_TF_STATIC)
    track = HandBaseTrack(buf, camera_frame, hand_frame)
    T_ch = [track.at(int(s)) for s in stamps]
    if not js or any(T is None for T in T_ch):
        return None
    return baselines.joints_at(np.asarray(js), np.stack(qs), stamps), np.stack(T_ch)


def bag_baselines(bag: str | Path, gt: dict, est: dict, points: np.ndarray, symmetric: bool,
                  camera_frame: str = "camera_color_optical_frame", hand_frame: Optional[str] = None) -> dict:
    """The baselines beside ``est`` on the ground-truth frames it matches exactly (stamp -> pose dicts):
    ``{"baselines": {name: {adds_mean_cm, add_mean_cm, rot_err_mean_deg}}, "adds_ratio_to_baseline",
    "rot_ratio_to_baseline"}``; ``hand_only`` only when the bag has joint states and camera->hand."""
    from hp_ros.core import baselines
    from hp_ros.core.hand import HandModel

    stamps = np.array(sorted(s for s in gt if s in est), dtype=np.int64)
    if len(stamps) == 0:
        return {}
    hand = HandModel.default()
    T0 = np.asarray(est[int(stamps[0])], dtype=np.float64)
    T_gt = np.stack([gt[int(s)] for s in stamps])
    T_est = np.stack([est[int(s)] for s in stamps])
    inputs = _bag_inputs(bag, hand, camera_frame, hand_frame or hand.base_link, stamps)
    if inputs is None:
        poses = baselines.baseline_poses(T0, len(stamps))
    else:
        poses = baselines.baseline_poses(T0, len(stamps), hand, inputs[0], inputs[1], points)
    axis = symmetry_axis_of_points(points) if symmetric else None
    tr = baselines.frame_errors(T_gt, T_est, points, axis)
    bl = {n: baselines.frame_errors(T_gt, P, points, axis) for n, P in poses.items()}
    rep = baselines.pooled_report([tr], {n: [e] for n, e in bl.items()})
    means = {n: {k[len(f"baseline_{n}_"):]: v for k, v in rep.items() if k.startswith(f"baseline_{n}_")} for n in bl}
    return {"baselines": means, "adds_ratio_to_baseline": rep["adds_ratio_to_baseline"],
            "rot_ratio_to_baseline": rep["rot_ratio_to_baseline"]}


def symmetry_axis_of_points(points: np.ndarray) -> np.ndarray:
    """The symmetry axis of a symmetric object's points ``(N, 3)``: the principal direction whose
    perpendicular spread is the most even (a can's axis)."""
    p = points - points.mean(0)
    w, V = np.linalg.eigh(p.T @ p)
    gaps = [abs(w[1] - w[2]), abs(w[0] - w[2]), abs(w[0] - w[1])]   # axis i: the other two equal
    return V[:, int(np.argmin(gaps))]
