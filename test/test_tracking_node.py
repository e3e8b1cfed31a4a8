"""tracking_node over DDS: replay a synthetic bag (joint states + observations computed from ground
truth), compare the published pose/TF with ground truth, check covariance, latency, bad input and
time going backwards (the bag replayed a second time)."""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import pytest

from hp_ros import graph
from hp_ros.core import metrics
from hp_ros.io import bag as B
from hp_ros.io import msgs as M
from hp_ros.ros_process import python_module_cmd

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_ekf", REPO / "benchmarks" / "bench_ekf.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TIPS = ["ah_link_04", "ah_link_14", "ah_link_24", "ah_link_34"]
# ADD-S limits of the tracking test (mean, max over the frames): the tracker measured 0.34 / 0.49 cm;
# its baselines on the same frames 0.96 / 1.08 cm (asserted to fail them: the old 1 / 3 cm passed them)
MEAN_LIMIT, MAX_LIMIT = 0.006, 0.009


def _write_bag(path, seq, obs):
    """Joint states, camera_info, observations (from ground truth + noise) and the GT pose."""
    extra = {f"hp_ros_msgs/msg/{n}": (REPO / "hp_ros_msgs" / "msg" / f"{n}.msg").read_text()
             for n in ("ObjectObservation", "FingertipObservations")}
    events = sorted([(int(t), 0, k) for k, t in enumerate(seq.joint_stamps_ns)]
                    + [(int(t), 1, k) for k, t in enumerate(seq.frame_stamps_ns)])
    with B.BagWriter(path, extra_msgs=extra) as bag:
        JS, CI = bag.msg_class("sensor_msgs/msg/JointState"), bag.msg_class("sensor_msgs/msg/CameraInfo")
        TF, TS = bag.msg_class("tf2_msgs/msg/TFMessage"), bag.msg_class("geometry_msgs/msg/TransformStamped")
        OO, FO = bag.msg_class("hp_ros_msgs/msg/ObjectObservation"), bag.msg_class("hp_ros_msgs/msg/FingertipObservations")
        PS = bag.msg_class("geometry_msgs/msg/PoseStamped")
        Hdr, Roi = M.field_class(OO, "header"), M.field_class(OO, "bbox")
        Pt = M.field_class(OO, "center_3d")
        Pose = M.field_class(OO, "pose")
        Q = M.field_class(Pose, "orientation")
        no_pose = dict(has_pose=False, pose=Pose(position=Pt(x=0.0, y=0.0, z=0.0), orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0)),
                       pose_covariance=np.zeros(36), pose_confidence=0.0)
        for t, kind, k in events:
            if kind == 0:
                bag.write(graph.JOINT_STATES, "sensor_msgs/msg/JointState",
                          M.make_joint_state(seq.joint_names, seq.joint_positions[k], t, JS), t)
                if seq.T_world_hand_tf is not None:   # the arm's state publisher: world -> hand base
                    bag.write(B.TOPIC_TF, "tf2_msgs/msg/TFMessage", M.make_tf_message([M.make_transform_stamped(
                        seq.T_world_hand_tf[k], t, seq.world_frame, seq.hand_frame, TS)], TF), t)
                continue
            bag.write(graph.CAMERA_TOPICS["color_info"], "sensor_msgs/msg/CameraInfo",
                      M.make_camera_info(seq.K, seq.width, seq.height, CI, stamp_ns=t), t)
            c = obs.center[k]
            ok = bool(np.all(np.isfinite(c)))
            hdr = M.make_header(Hdr, t, graph.CAMERA_FRAME)
            bag.write(graph.TOPICS["object_observation"], "hp_ros_msgs/msg/ObjectObservation", OO(
                header=hdr, valid=ok, confidence=1.0 if ok else 0.0, centroid_u=float(c[0]) if ok else math.nan,
                centroid_v=float(c[1]) if ok else math.nan,
                bbox=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False), area=1000,
                median_depth=float(c[2]) if ok else math.nan, has_center_3d=False, center_3d=Pt(x=0.0, y=0.0, z=0.0),
                backend="ground_truth", **no_pose), t)
            uv = obs.tips_px[k]
            seen = np.all(np.isfinite(uv), axis=1)
            bag.write(graph.TOPICS["fingertips"], "hp_ros_msgs/msg/FingertipObservations", FO(
                header=hdr, names=TIPS, u=uv[:, 0].copy(), v=uv[:, 1].copy(), confidence=seen.astype(float),
                fk_u=np.zeros(4), fk_v=np.zeros(4)), t)
            bag.write(graph.TOPICS["ground_truth"], "geometry_msgs/msg/PoseStamped",
                      M.make_pose_stamped(seq.T_cam_obj[k], t, graph.CAMERA_FRAME, PS), t)


def _param(values):
    return "[" + ",".join(f"{float(v):.9f}" for v in values) + "]"


@pytest.mark.ros
@pytest.mark.slow
def test_tracking_node_follows_ground_truth_and_recovers(tmp_path, ros_node, start_process):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from hp_ros_msgs.msg import ObjectObservation, TrackingStatus
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from tf2_msgs.msg import TFMessage

    from rostest_utils import spin_until, wait_for_publishers, wait_for_subscribers

    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.se3 import matrix_to_quat
    import torch

    from hp_ros.core.ekf import EKFConfig

    # hand base fixed to the camera (motion 'classic'): on the 'lab' motion (an arm carrying the hand,
    # /tf) this node without depth fits goes LOST after ~2 s (15 rejected observations; with
    # LAB_MOTION_NOISE the covariance trace instead), so this test cannot use it yet (issue 29 report)
    seq = bench.make_sequence("cracker_box", seconds=3.0, seed=3)
    obs = bench.make_observations(seq, seed=3)
    path = tmp_path / "synth"
    _write_bag(path, seq, obs)
    T_first = bench.initial_pose(seq, EKFConfig(), 3)   # not the true pose: ~1 cm and a few degrees off
    assert np.linalg.norm(T_first[:3, 3] - seq.T_cam_obj[0, :3, 3]) > 0.005
    q = matrix_to_quat(torch.tensor(T_first[:3, :3])).numpy()
    # camera->hand comes from /tf_static (no camera_to_hand parameter), as from a robot's
    # static_transform_publisher: a chain camera_link -> optical frame, camera_link -> hand base
    node = start_process(python_module_cmd(
        "hp_ros.nodes.tracking_node", "--ros-args", "-r", "__ns:=/hp_ros",
        "-p", f"initial_pose:={_param(list(T_first[:3, 3]) + list(q))}", "-p", "use_sim_time:=true"),
        name="tracking_node")
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy
    T_link_opt = np.eye(4)
    T_link_opt[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # REP-103 body -> optical
    T_link_opt[:3, 3] = [0.0, 0.015, 0.0]
    T_link_hand = T_link_opt @ seq.T_cam_hand_published
    static_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
    tf_static = ros_node.create_publisher(TFMessage, "/tf_static", static_qos)
    tf_static.publish(TFMessage(transforms=[
        M.make_transform_stamped(T_link_opt, 0, "camera_link", graph.CAMERA_FRAME, TransformStamped),
        M.make_transform_stamped(T_link_hand, 0, "camera_link", "ah_palm_link", TransformStamped)]))
    assert spin_until(ros_node, lambda: "camera->hand from /tf_static" in node.log_text(), timeout=20), \
        node.log_text()

    qos = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
    poses, tfs, status = [], [], []
    ros_node.create_subscription(PoseWithCovarianceStamped, graph.TOPICS["object_pose"],
                                 lambda m, info: poses.append((info["received_timestamp"], m)), qos)
    ros_node.create_subscription(TFMessage, "/tf", lambda m: tfs.extend(m.transforms), qos)
    ros_node.create_subscription(TrackingStatus, graph.TOPICS["tracking_status"], status.append, qos)
    diags = []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, qos)
    js_pub = ros_node.create_publisher(JointState, graph.JOINT_STATES, qos)
    obs_pub = ros_node.create_publisher(ObjectObservation, graph.TOPICS["object_observation"], qos)
    # the node subscribes after its warm-up (Warp kernels): wait for its observation subscriptions
    assert wait_for_subscribers(ros_node, graph.TOPICS["fingertips"], timeout=60), node.log_text()
    assert wait_for_subscribers(ros_node, graph.TOPICS["object_observation"], timeout=10), node.log_text()
    assert wait_for_publishers(ros_node, graph.TOPICS["object_pose"], timeout=10), node.log_text()

    # the bag's clock on /clock (use_sim_time): 4 observation/joint subscriptions + /clock
    replay = start_process(python_module_cmd("hp_ros.tools.replay", str(path), "--clock", "--wait-subscribers", "5",
                                             "--wait-timeout", "30"), name="replay")
    n_frames = seq.num_frames
    spin_until(ros_node, lambda: not replay.alive() and len(poses) >= n_frames - 2, timeout=60)
    spin_until(ros_node, lambda: False, timeout=0.5)
    diag = {kv.key: kv.value for kv in diags[-1].status[0].values} if diags else {}
    assert len(poses) >= n_frames - 2, (f"{len(poses)} poses for {n_frames} frames, {len(status)} status, "
                                        f"alive={node.alive()}, diagnostics {diag}\n{node.log_text()}")

    stamps = {int(t): i for i, t in enumerate(seq.frame_stamps_ns)}
    idx = [stamps[M.header_stamp_ns(m)] for _, m in poses]
    T_est = np.stack([M.pose_to_matrix(m) for _, m in poses])
    pts = ObjectModel.builtin("cracker_box").surface_points(500)
    e = metrics.add_s(seq.T_cam_obj[idx], T_est, pts)
    print(f"tracker ADD-S mean / max {100 * e.mean():.3f} / {100 * e.max():.3f} cm")
    assert e.mean() < MEAN_LIMIT and e.max() < MAX_LIMIT, (e.mean(), e.max())
    # the same limits on the same frames fail for the baselines (issue 29): the start pose held, and
    # the object carried rigidly by the hand from it - a tracker whose observations did nothing fails
    from hp_ros.core.baselines import sequence_baselines
    from hp_ros.core.hand import HandModel

    for name, T_b in sequence_baselines(seq, T_first, HandModel.default(), pts).items():
        e_b = metrics.add_s(seq.T_cam_obj[idx], T_b[idx], pts)
        assert e_b.mean() >= MEAN_LIMIT and e_b.max() >= MAX_LIMIT, (name, e_b.mean(), e_b.max())
    for _, m in poses:
        cov = M.covariance_from_msg(m)
        assert np.all(np.diag(cov) > 0) and np.all(np.linalg.eigvalsh(cov) > 0)
    # TF carries the same poses
    tf_obj = [t for t in tfs if t.child_frame_id == "object" and t.header.frame_id == graph.CAMERA_FRAME]
    assert len(tf_obj) >= n_frames - 2
    np.testing.assert_allclose(M.pose_to_matrix(tf_obj[-1]), T_est[-1], atol=1e-6)
    # latency: receive time - header stamp (wall vs bag time: compare offsets), no growth
    recv = np.array([r for r, _ in poses], float) * 1e-9
    hdr = np.array([M.header_stamp_ns(m) for _, m in poses], float) * 1e-9
    lat = (recv - recv[0]) - (hdr - hdr[0])
    third = len(lat) // 3
    assert lat[-third:].mean() - lat[:third].mean() < 0.05, lat
    assert all(s.state_name in ("TRACKING", "INITIALIZING") for s in status)
    assert status[-1].state_name == "TRACKING" and status[-1].covariance_trace > 0
    # use_sim_time: the node's clock is the bag's /clock, so its reported latency (clock now minus
    # the frame stamp) is tens of ms; on the wall clock it would be the bag's age (years)
    lat_ms = np.array([s.latency_ms for s in status if s.state_name == "TRACKING"])
    assert -100 < np.median(lat_ms) < 1000, lat_ms

    # bad input: unknown joint names and a NaN observation -> logged, the node keeps running
    js = JointState(name=["not_a_joint"] * 16, position=[0.0] * 16)
    js_pub.publish(js)
    js_pub.publish(js)
    bad = ObjectObservation(valid=True, confidence=1.0, centroid_u=math.nan, centroid_v=1.0, median_depth=math.nan)
    bad.header.stamp.sec = int((int(seq.frame_stamps_ns[-1]) + 10 ** 9) // 10 ** 9)
    obs_pub.publish(bad)
    # joint states are taken when the tracker runs (at least every 0.5 s while idle): wait for the log
    spin_until(ros_node, lambda: "joint state ignored" in node.log_text() and "non-finite" in node.log_text(),
               timeout=10.0)
    spin_until(ros_node, lambda: False, timeout=1.0)  # a second report would come within this
    assert node.alive(), node.log_text()
    log = node.log_text()
    assert log.count("joint state ignored") == 1 and "not_a_joint" in log, log  # logged once, named
    assert log.count("non-finite centroid") == 1, log

    # time going backwards: replay again -> reset, re-initialised from the parameter, tracking again
    # (the new replay process waits until the node's 4 subscriptions matched it: samples sent
    # before discovery completes are lost to any subscriber)
    n_before = len(poses)
    replay2 = start_process(python_module_cmd("hp_ros.tools.replay", str(path), "--wait-subscribers", "4",
                                              "--wait-timeout", "30"), name="replay2")
    spin_until(ros_node, lambda: not replay2.alive() and len(poses) >= n_before + n_frames - 2, timeout=60)
    second = poses[n_before:]
    # the jump back is believed once stamp_jump_confirm (5) messages of two streams confirm it: the
    # first frames of the new pass are refused until then (a stray stamp must not reset)
    assert len(second) >= n_frames - 7, f"{len(second)} of {n_frames}\n{node.log_text()}"
    T2 = np.stack([M.pose_to_matrix(m) for _, m in second])
    idx2 = [stamps[M.header_stamp_ns(m)] for _, m in second]
    e2 = metrics.add_s(seq.T_cam_obj[idx2], T2, pts)
    assert e2.mean() < MEAN_LIMIT, e2.mean()
    assert "reset: time jumped" in node.log_text() and "initial pose re-armed" in node.log_text() and node.alive()
    assert status[-1].state_name == "TRACKING"

    # the reset service: answers, logs, and re-arms the initial pose from the parameter
    from std_srvs.srv import Trigger
    client = ros_node.create_client(Trigger, graph.SERVICES["reset_tracking"])
    assert client.wait_for_service(timeout_sec=10)
    fut = client.call_async(Trigger.Request())
    assert spin_until(ros_node, fut.done, timeout=10)
    assert fut.result().success and "re-armed" in fut.result().message
    assert spin_until(ros_node, lambda: "reset: reset service" in node.log_text(), timeout=5)
    assert node.alive()


@pytest.mark.ros
def test_the_frame_timer_runs_only_while_something_waits(ros_env):
    """The 10 ms timer is cancelled while nothing is pending (no executor callback 100x/s when idle)
    and restarted when a frame waits (here: for joint states that have not come)."""
    import rclpy
    from sensor_msgs.msg import CameraInfo

    from hp_ros.core.synth import SynthConfig, generate_sequence
    from hp_ros.nodes.tracking_node import JOINT_WAIT, TrackingNode

    seq = generate_sequence(SynthConfig(duration_s=0.2, seed=2, render=False))
    Tc = seq.T_cam_hand_published
    from scipy.spatial.transform import Rotation
    cam_hand = [*Tc[:3, 3], *Rotation.from_matrix(Tc[:3, :3]).as_quat()]
    rclpy.init(args=["--ros-args", "-p", "object_mesh:=builtin:cracker_box", "-p", "request_refinement:=false",
                     "-p", f"camera_to_hand:={[float(v) for v in cam_hand]}"])
    node = None
    try:
        node = TrackingNode()
        assert node.timer.is_canceled() and not node.tracker.pending
        info = {"source_timestamp": 0, "received_timestamp": 0}
        # joint states flow, but none has reached the frame's stamp yet (and none comes): the
        # callback waits on the joint reader for JOINT_WAIT, then leaves the frame to the timer
        stamp = int(seq.frame_stamps_ns[0])
        node.tracker.add_joint_states(np.array([stamp - 20_000_000]), seq.joint_positions[:1], time.monotonic())
        t0 = time.monotonic()
        node.on_camera_info(M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, stamp_ns=stamp), info)
        assert time.monotonic() - t0 >= JOINT_WAIT  # it did wait for them
        assert node.tracker.pending and not node.timer.is_canceled()  # the frame waits for joint states
        node.tracker.reset("test")
        node.on_timer()
        assert not node.tracker.pending and node.timer.is_canceled()
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown()
