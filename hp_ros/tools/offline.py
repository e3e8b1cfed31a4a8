"""A recorded bag through the pipeline in one process, as fast as the CPU allows (``hp-ros eval
BAG`` without ``--est``).

The same core objects as the live graph, fed the bag's messages in their recorded order: the
:class:`~hp_ros.core.segmentation.segmenter.Segmenter` with the segmentation node's parameters and
the :class:`~hp_ros.core.ekf.FrameTracker` with the tracking node's. Per colour frame, in the
order the live graph runs it: the tracker poses the frame from the joint states (the pose the
tracking node publishes when the frame's camera_info arrives, its ``pairing_timeout`` being
shorter than a segmentation), the segmentation takes that pose as the model backend's prior, and
its observations reach the tracker late and go into its next frame (out-of-sequence update). A
frame is taken once its depth image and a joint state after it have been read (or the bag ends).

No DDS, no clock: the result is deterministic. It differs from a live run only where the live
graph depends on arrival times (a frame the segmentation skipped while behind, an observation
that missed a later frame).

Parameters: each node's declared defaults, then its section of ``--params-file`` (the launch
file's YAML), then a synthetic bag's sidecar (its marker colours, as the demo gives them), then
``--set name=value``. The tracker starts from ``initial_pose`` (parameter) or, with
``initial_offset``, from the bag's first ground-truth pose moved by (metres, degrees) like the demo.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["OfflineResult", "node_parameters", "run_offline"]


@dataclass
class OfflineResult:
    """Poses by stamp (``{stamp_ns: (4, 4)}``, the frames posed TRACKING), the tracker's state per
    frame, counts and the CPU seconds of the frame loop (start-up excluded)."""

    poses: dict = field(default_factory=dict)
    states: list = field(default_factory=list)
    frames: int = 0
    segmented: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    startup_s: float = 0.0
    bag_s: float = 0.0
    counts: dict = field(default_factory=dict)
    model_points: Optional[np.ndarray] = None   # (N, 3) surface samples of the tracked object (for scoring)


def _yaml_section(path: Optional[str | Path], node: str) -> dict:
    if not path:
        return {}
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    for key, section in doc.items():
        if str(key).strip("/").split("/")[-1] == node and isinstance(section, dict):
            return dict(section.get("ros__parameters", {}))
    return {}


def node_parameters(node: str, params_file=None, overrides: Optional[dict] = None) -> dict:
    """A node's parameters without ROS: declared defaults, its section of ``params_file``, then
    ``overrides``. ``node``: ``segmentation_node`` or ``tracking_node``."""
    from hp_ros.nodes.params import COMMON_PARAMS

    if node == "segmentation_node":
        from hp_ros.nodes.segmentation_params import SEG_PARAMS as own
    elif node == "tracking_node":
        from hp_ros.nodes.tracking_params import OWN_PARAMS as own
    else:
        raise ValueError(f"no offline parameters for {node!r}")
    table = {**COMMON_PARAMS, **own}
    p = {k: v.default for k, v in table.items()}
    for k, v in {**_yaml_section(params_file, node), **(overrides or {})}.items():
        if k not in table:
            continue  # another node's (a shared --set) or a launch-only setting
        p[k] = v
    for k, v in p.items():
        err = table[k].check(v) if table[k].check is not None else None
        if err:
            raise ValueError(f"{node} parameter {k}: {err}")
    return p


def _sidecar(bag: Path) -> dict:
    from hp_ros.core.synth.writer import SIDECAR_NAME

    f = Path(bag) / SIDECAR_NAME
    return json.loads(f.read_text()) if f.is_file() else {}


class _Calibration:
    """camera -> hand as the nodes have it: the ``camera_to_hand`` parameter, else ``/tf_static`` and
    ``/tf`` in a :class:`~hp_ros.core.tf_buffer.TransformBuffer` looked up at each stamp (a moving
    hand base interpolated, a static chain one value)."""

    def __init__(self, camera_frame: str, hand_frame: str, fixed: Optional[np.ndarray]):
        from hp_ros.core.ekf.hand_base import HandBaseTrack
        from hp_ros.core.tf_buffer import TransformBuffer

        self.fixed = fixed
        self.buffer = TransformBuffer()
        self.track = HandBaseTrack(self.buffer, camera_frame, hand_frame)

    def add(self, msg, static: bool) -> None:
        from hp_ros.io import msgs

        for T, parent, child, stamp in msgs.tf_message_to_list(msg):
            try:
                self.buffer.set_transform(T, parent, child, 0 if static else stamp, static=static)
            except ValueError:
                pass  # a malformed transform: the nodes refuse it too

    def at(self, stamp: int) -> Optional[np.ndarray]:
        return self.fixed if self.fixed is not None else self.track.at(stamp)


def _initial_pose(bag: Path, gt_topic: str, offset: tuple) -> np.ndarray:
    """The bag's first ground-truth pose moved by ``offset`` = (metres, degrees), as the demo does."""
    from hp_ros.tools.demo import offset_pose
    from hp_ros.tools.evaluate import read_pose_topic

    gt = read_pose_topic(bag, gt_topic)
    if not gt:
        raise ValueError(f"--initial-offset needs ground truth on {gt_topic} in {bag}")
    return offset_pose(gt[min(gt)], offset)


class _Pipeline:
    """The core objects of the two nodes and the per-frame order between them."""

    def __init__(self, seg_p: dict, trk_p: dict, initial_pose: Optional[np.ndarray]):
        from hp_ros.core.ekf import EKFConfig, FrameTracker, FrameTrackerConfig
        from hp_ros.core.sdf import MeshSDF
        from hp_ros.nodes.buffers import JointStateBuffer
        from hp_ros.nodes.loaders import camera_to_hand_from_param, load_hand, load_object
        from hp_ros.nodes.segmentation_params import segmenter_config
        from hp_ros.nodes.tracking_params import OWN_PARAMS

        self.seg_p, self.trk_p = seg_p, trk_p
        self.hand, self.obj = load_hand(trk_p), load_object(trk_p)
        colors = [float(c) for c in seg_p["marker_colors"]] if len(seg_p["marker_colors"]) == 12 else []
        self.seg_cfg = segmenter_config(seg_p, colors, "cpu")
        self.seg_obj = load_object(seg_p)
        self.segmenter = None
        cfg = EKFConfig.from_dict({k: trk_p[k] for k in OWN_PARAMS if k in EKFConfig.__dataclass_fields__})
        self.tracker = FrameTracker(self.hand, self.obj, cfg, FrameTrackerConfig.from_dict(
            {**trk_p, "joint_capacity": 100_000}), sdf=MeshSDF(self.obj.vertices, self.obj.faces),
            initial_pose=initial_pose, warn=lambda *a: None, info=lambda *a: None)
        self.joints = JointStateBuffer(self.hand.joint_state_mapper())
        self.mapper = self.hand.joint_state_mapper()
        self.calib = _Calibration(seg_p["camera_frame"], seg_p["hand_base_frame"],
                                  camera_to_hand_from_param(seg_p["camera_to_hand"]))
        if self.calib.fixed is None:
            self.tracker.set_hand_base(self.calib.track)  # a moving base: a control input, as in the node
        self.K = None
        self.result = OfflineResult()

    def camera_info(self, msg) -> None:
        from hp_ros.core.segmentation.segmenter import Segmenter
        from hp_ros.io import msgs

        intr = msgs.camera_info_to_intrinsics(msg)
        if self.K is None or not np.allclose(intr.K, self.K):
            self.K = intr.K
            self.segmenter = Segmenter(intr.K, intr.width, intr.height, self.hand, self.seg_cfg,
                                       object_model=self.seg_obj)
        self.tracker.set_camera(intr.K)

    def joint_state(self, msg) -> None:
        """One JointState: the segmentation's buffer and the tracker's (the nodes' own conversions)."""
        from hp_ros.nodes.buffers import joint_state_arrays

        self.joints.add(msg)
        stamps, q = joint_state_arrays([msg], self.mapper, lambda text: None)
        if len(stamps):
            self.tracker.add_joint_states(stamps, q, 0.0)

    def frame(self, stamp: int, rgb_msg, depth_msg) -> None:
        """One colour frame (and its depth image or None): pose, segment, observe."""
        from hp_ros.core.ekf import TrackState
        from hp_ros.core.observation import FingertipObservation
        from hp_ros.core.segmentation.image import depth_to_metres, to_rgb
        from hp_ros.io import msgs

        r = self.result
        r.frames += 1
        T_ch = self.calib.at(stamp)
        self.tracker.set_calibration(T_ch)
        self.tracker.add_frame(stamp, 0.0)
        prior = None
        for res in self.tracker.flush():
            r.states.append((res.stamp, int(res.state)))
            if res.T_cam_obj is not None and res.state == TrackState.TRACKING:
                r.poses[res.stamp] = res.T_cam_obj
                if res.stamp == stamp:
                    prior = (res.T_cam_obj, float(np.sqrt(max(0.0, float(np.max(np.diag(res.covariance)[:3]))))))
        if self.segmenter is None:
            return
        rgb = to_rgb(msgs.image_to_numpy(rgb_msg), rgb_msg.encoding)
        depth = None if depth_msg is None else depth_to_metres(msgs.image_to_numpy(depth_msg), depth_msg.encoding,
                                                                 self.seg_p["depth_scale"])
        q = self.joints.at(stamp, max_gap_ns=int(self.seg_p["joint_max_gap"] * 1e9))
        if "model" in self.seg_p["object_backend"] and prior is None and not self.seg_p["fallback_backend"]:
            return
        # as in the graph: the tracker reads fingertips only while its filter can use them, and the
        # segmentation looks for markers only while someone reads them
        tips_used = self.tracker.uses_fingertips
        seg = self.segmenter.segment(rgb, depth, q if T_ch is not None else None, T_ch, None,
                                     T_cam_obj_prior=None if prior is None else prior[0],
                                     prior_pos_sigma=None if prior is None else prior[1], markers=tips_used)
        r.segmented += 1
        if seg.hand_aligned:  # as the segmentation node publishes it (/hp_ros/hand_alignment)
            self.tracker.add_hand_alignment(stamp, seg.T_cam_hand)
        self.tracker.add_observation(stamp, "object", seg.observation, 0.0)
        if seg.fingertips is not None and tips_used:
            tips = FingertipObservation(tuple(self.hand.fingertip_links), seg.fingertips.uv,
                                        seg.fingertips.confidence, seg.fingertips.fk_uv)
            self.tracker.add_observation(stamp, "fingertips", tips, 0.0)


def run_offline(bag: str | Path, params_file=None, overrides: Optional[dict] = None,
                initial_offset: Optional[tuple] = None, gt_topic: Optional[str] = None,
                log=print) -> OfflineResult:
    """Run the bag through the pipeline (see the module doc); the tracker's poses by stamp."""
    from hp_ros.io import bag as B
    from hp_ros.io import msgs

    t0 = time.monotonic()
    bag = Path(bag)
    side = _sidecar(bag)
    extra = dict(overrides or {})
    if side:  # a synthetic bag: its object and marker colours, as the demo hands them to the nodes
        extra.setdefault("object_mesh", side.get("object", "builtin:cracker_box"))
        if side.get("marker_colors"):
            extra.setdefault("marker_colors", [round(255.0 * float(c), 3) for rgb in side["marker_colors"] for c in rgb])
            extra.setdefault("marker_radius", float(side["marker_radius"]))
    seg_p = node_parameters("segmentation_node", params_file, extra)
    trk_p = node_parameters("tracking_node", params_file, extra)
    initial = _initial_pose(bag, gt_topic or B.TOPIC_GT_OBJECT_POSE, initial_offset) if initial_offset else None
    if initial is None and len(trk_p["initial_pose"]) != 7:
        raise ValueError("the offline run needs a start pose: --initial-offset M DEG (the first ground-truth "
                         "pose moved, as the demo) or --set initial_pose=[x,y,z,qx,qy,qz,qw] (camera frame)")
    pipe = _Pipeline(seg_p, trk_p, initial)
    present = set(B.bag_summary(bag).topics)
    need = {B.TOPIC_COLOR_IMAGE, B.TOPIC_COLOR_INFO, B.TOPIC_JOINT_STATES}
    if need - present:
        raise ValueError(f"{bag} lacks {sorted(need - present)}: the pipeline needs colour images, their "
                         f"camera_info and joint states")
    topics = present & (need | {B.TOPIC_DEPTH_IMAGE, B.TOPIC_TF_STATIC, "/tf"})
    result = pipe.result
    result.startup_s = time.monotonic() - t0
    c0, w0 = time.process_time(), time.monotonic()
    waiting: dict = {}   # stamp -> {"rgb": msg, "depth": msg}
    newest_joint = -1
    first = last = None

    def ready(flush_all: bool) -> None:
        for s in sorted(waiting):
            f = waiting[s]
            if not flush_all and ("rgb" not in f or "depth" not in f or newest_joint < s):
                break
            if "rgb" in f:
                pipe.frame(s, f["rgb"], f.get("depth"))
            del waiting[s]

    for topic, _type, t_ns, msg in B.read_bag(bag, sorted(topics)):
        first = t_ns if first is None else first
        last = t_ns
        if topic in (B.TOPIC_TF_STATIC, "/tf"):
            pipe.calib.add(msg, static=topic == B.TOPIC_TF_STATIC)
        elif topic == B.TOPIC_COLOR_INFO:
            pipe.camera_info(msg)
        elif topic == B.TOPIC_JOINT_STATES:
            pipe.joint_state(msg)
            newest_joint = max(newest_joint, msgs.header_stamp_ns(msg))
        elif topic in (B.TOPIC_COLOR_IMAGE, B.TOPIC_DEPTH_IMAGE):
            waiting.setdefault(msgs.header_stamp_ns(msg), {})["rgb" if topic == B.TOPIC_COLOR_IMAGE else "depth"] = msg
        ready(False)
    ready(True)
    from hp_ros.core.ekf import TrackState

    for res in pipe.tracker.flush():  # the observations of the last frame
        if res.T_cam_obj is not None and res.state == TrackState.TRACKING:
            result.poses[res.stamp] = res.T_cam_obj
    result.cpu_s, result.wall_s = time.process_time() - c0, time.monotonic() - w0
    result.bag_s = 0.0 if first is None else (last - first) * 1e-9
    result.counts = dict(pipe.tracker.counts)
    result.model_points = pipe.obj.surface_points(2000, seed=0).detach().double().numpy()
    log(f"[offline] {bag}: {result.frames} frames ({result.segmented} segmented), {len(result.poses)} posed, "
        f"{result.wall_s:.1f} s wall / {result.cpu_s:.1f} s CPU for {result.bag_s:.1f} s of bag "
        f"(start-up {result.startup_s:.1f} s)")
    return result
