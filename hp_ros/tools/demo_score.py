"""Scoring of ``hp-ros demo`` (:mod:`hp_ros.tools.demo`): the collected estimates against the
synthetic sequence's ground truth (:func:`score`: accuracy, rate, latency, time to the first
pose, penetration, the baselines), and the start pose the tracker and the baselines share
(:func:`initial_pose`, :func:`offset_pose`)."""
from __future__ import annotations

import math

import numpy as np


def initial_pose(seq, initial_offset: tuple = (0.01, 5.0)) -> np.ndarray:
    """``(4, 4)``: a user starts the tracker from a rough pose (default: ground truth of the first frame
    off by 1 cm and 5 degrees); the tracker refines from there. The baselines start there too."""
    return offset_pose(seq.T_cam_obj[0], initial_offset)


def offset_pose(T: np.ndarray, offset: tuple) -> np.ndarray:
    """``T`` ``(4, 4)`` moved by ``offset`` = (metres, degrees) in a fixed pseudo-random direction (the
    demo's and the offline evaluation's start pose)."""
    from hp_ros.core import se3
    import torch

    rng = np.random.default_rng(1)
    xi = np.concatenate([rng.normal(size=3), rng.normal(size=3)])
    xi[:3] *= float(offset[0]) / np.linalg.norm(xi[:3])
    xi[3:] *= math.radians(float(offset[1])) / np.linalg.norm(xi[3:])
    return se3.apply_delta(torch.as_tensor(T, dtype=torch.float64), torch.as_tensor(xi)).numpy()


def time_to_first_pose(pose_times: dict, image_times: dict, first_frame_ns, rate: float = 1.0) -> float:
    """Seconds from the sequence's first frame (stamp ``first_frame_ns``) to the first pose, on the
    stream's own clock: the first posed stamp's distance from it (bag time / ``rate``) plus that
    pose's latency (``pose_times`` / ``image_times``: stamp -> publish time [s]; 0 when the image's
    time is unknown). NaN without a pose."""
    if not pose_times or first_frame_ns is None:
        return float("nan")
    first = min(pose_times)
    own = pose_times[first] - image_times[first] if first in image_times else 0.0
    return float((first - first_frame_ns) * 1e-9 / max(rate, 1e-9) + max(own, 0.0))


def score(seq, collector, object_spec: str, t_replay: float, initial_offset: tuple = (0.01, 5.0),
          rate: float = 1.0) -> dict:
    """Metrics of the collected estimates against the sequence's ground truth."""
    from hp_ros.core import metrics
    from hp_ros.core.objects import ObjectModel

    obj = ObjectModel.from_spec(object_spec)
    pts = obj.surface_points(2000, seed=0).detach().cpu().numpy().astype(np.float64)
    gt = {int(s): T for s, T in zip(seq.frame_stamps_ns, seq.T_cam_obj)}
    est = {s: v[0] for s, v in collector.poses.items()}
    from hp_ros.core.ekf import symmetry_axis

    # a can's spin about its axis is unobservable: rot_err_* is the axis' error there (the full
    # angle stays under rot_err_geodesic_*), as in the baselines' report
    axis = symmetry_axis(obj)
    result = metrics.evaluate_sequence(gt, est, pts, symmetric=obj.symmetric, symmetry_axis=axis)
    # rate and latency: pose receive time minus the receive time of the image with that stamp
    lat = [1000.0 * (v[2] - collector.images[s]) for s, v in collector.poses.items() if s in collector.images]
    # poses per second while the stream runs: over the span of the frames' own publish times (the
    # replay's start-up - imports, discovery - is not part of the stream)
    t_frames = sorted(collector.images.values())
    span = (t_frames[-1] - t_frames[0]) * len(t_frames) / max(1, len(t_frames) - 1) if len(t_frames) > 1 else t_replay
    result["output_rate_hz"] = len(collector.poses) / span if span > 0 else 0.0
    # cold start: from the sequence's first frame to the first pose, on the stream's own clock - the
    # first posed frame's stamp after the first frame's (bag time / rate), plus that pose's latency.
    # (The listener's first camera_info is no start: its subscription can match a second or more after
    # the replay began, which gave 0.14 s and negative times once the first pose came within ~1 s.)
    result["time_to_first_pose_s"] = time_to_first_pose(
        {st: v[2] for st, v in collector.poses.items()}, collector.images, min(gt, default=None), rate)
    result["latency_ms_p95"] = float(np.percentile(lat, 95)) if lat else float("nan")
    result["latency_ms_median"] = float(np.median(lat)) if lat else float("nan")
    result["latencies_ms"] = [round(x, 2) for _, x in sorted(zip(
        [s for s in collector.poses if s in collector.images], lat))]  # in stamp order
    result["tf_messages"] = len(collector.tf)
    result["segmentation_rate_hz"] = collector.observations / span if span > 0 else 0.0
    result["max_penetration_mm"] = _max_penetration_mm(seq, obj, est)
    result.update(_baselines(seq, axis, est, pts, initial_offset))
    result["motion"] = seq.config.motion
    result["estimates"] = est  # {stamp_ns: (4, 4)} as published (not written to metrics.json)
    result["final_state"] = collector.status[-1][1] if collector.status else "none"
    result["diagnostics"] = dict(collector.diagnostics)
    # the tracker's state changes in order, e.g. ["INITIALIZING", "TRACKING", "LOST", "TRACKING"]
    result["states"] = [name for k, (_, name) in enumerate(collector.status)
                        if k == 0 or collector.status[k - 1][1] != name]
    return result


def _baselines(seq, axis, est: dict, pts: np.ndarray, initial_offset: tuple) -> dict:
    """``frozen`` / ``hand_only`` from the tracker's initial pose on the frames it posed, and its ratios
    to the better one (:func:`hp_ros.core.baselines.sequence_report`; ``axis``: the object's symmetry
    axis ``(3,)`` or None)."""
    from hp_ros.core import baselines
    from hp_ros.core.hand import HandModel

    return baselines.sequence_report(seq, est, initial_pose(seq, initial_offset), HandModel.default(), pts, axis)


def _max_penetration_mm(seq, obj, est: dict) -> float:
    """Deepest hand point inside the object over the estimated poses (true joints and hand)."""
    import torch

    from hp_ros.core.hand import HandModel
    from hp_ros.core.sdf import MeshSDF, signed_distance_world

    hand = HandModel.default()
    sdf = MeshSDF(obj.vertices, obj.faces)
    idx = {int(s): i for i, s in enumerate(seq.frame_stamps_ns)}
    frames = [(idx[s], T) for s, T in est.items() if s in idx]
    if not frames:
        return float("nan")
    q = torch.as_tensor(np.stack([seq.q_frames_true[i] for i, _ in frames]), dtype=torch.float32)
    base = torch.as_tensor(seq.cam_hand_frames()[[i for i, _ in frames]], dtype=torch.float32)
    pts = hand.surface_points(q, base)
    T = torch.as_tensor(np.stack([T for _, T in frames]), dtype=torch.float32)
    with torch.no_grad():
        d, _ = signed_distance_world(sdf, pts, T)
    return float(max(0.0, -d.min().item()) * 1000.0)
