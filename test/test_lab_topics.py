"""tracking_node's lab outputs over DDS (issue 24): /hp_ros/detections matches /hp_ros/object_pose
frame for frame (stamp, pose, covariance) with a score in [0, 1]; /hp_ros/vision_info reaches a
late subscriber (transient local); /hp_ros/contacts and /hp_ros/markers come while subscribed."""
from __future__ import annotations

import numpy as np
import pytest

from hp_ros import graph
from hp_ros.io import msgs as M
from hp_ros.ros_process import python_module_cmd


@pytest.mark.ros
@pytest.mark.slow
def test_detections_contacts_and_markers_follow_the_published_pose(tmp_path, ros_node, start_process):
    import torch
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from hp_ros_msgs.msg import ContactMap, TrackingStatus
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Detection3DArray, VisionInfo
    from visualization_msgs.msg import MarkerArray

    from rostest_utils import spin_until, wait_for_subscribers
    from test_tracking_node import _param, _write_bag, bench

    from hp_ros.core.se3 import matrix_to_quat

    seq = bench.make_sequence("cracker_box", seconds=2.0, seed=3)
    path = tmp_path / "synth"
    _write_bag(path, seq, bench.make_observations(seq, seed=3))
    pose7 = lambda T: list(T[:3, 3]) + list(matrix_to_quat(torch.tensor(T[:3, :3])).numpy())  # noqa: E731
    node = start_process(python_module_cmd(
        "hp_ros.nodes.tracking_node", "--ros-args", "-r", "__ns:=/hp_ros",
        "-p", f"initial_pose:={_param(pose7(seq.T_cam_obj[0]))}",
        "-p", f"camera_to_hand:={_param(pose7(seq.T_cam_hand_published))}"), name="tracking_node")
    qos = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
    from diagnostic_msgs.msg import DiagnosticArray

    got = {k: [] for k in ("pose", "det", "contacts", "markers", "status", "diag")}
    for key, typ, topic in (("pose", PoseWithCovarianceStamped, "object_pose"), ("det", Detection3DArray, "detections"),
                            ("contacts", ContactMap, "contacts"), ("markers", MarkerArray, "markers"),
                            ("status", TrackingStatus, "tracking_status"), ("diag", DiagnosticArray, None)):
        topic = "/diagnostics" if topic is None else graph.TOPICS[topic]
        ros_node.create_subscription(typ, topic, got[key].append, qos)
    assert wait_for_subscribers(ros_node, graph.TOPICS["fingertips"], timeout=60), node.log_text()
    # the node's publishers must have matched our readers before frames come (or it builds nothing)
    for topic in ("detections", "contacts", "markers"):
        assert spin_until(ros_node, lambda t=topic: ros_node.count_publishers(graph.TOPICS[t]) >= 1, timeout=20)
    spin_until(ros_node, lambda: False, timeout=1.0)
    replay = start_process(python_module_cmd("hp_ros.tools.replay", str(path), "--wait-subscribers", "4",
                                             "--wait-timeout", "30"), name="replay")
    n = seq.num_frames
    spin_until(ros_node, lambda: not replay.alive() and len(got["det"]) >= n - 2 and len(got["pose"]) >= n - 2,
               timeout=60)
    spin_until(ros_node, lambda: False, timeout=0.5)
    assert len(got["pose"]) >= n - 2 and len(got["det"]) >= n - 2, (len(got["pose"]), len(got["det"]), node.log_text())

    # one detection per posed frame, the same stamp, pose and covariance as /hp_ros/object_pose
    poses = {M.header_stamp_ns(m): m for m in got["pose"]}
    scores = []
    for arr in got["det"]:
        stamp = M.header_stamp_ns(arr)
        assert stamp in poses and arr.header.frame_id == graph.CAMERA_FRAME and len(arr.detections) == 1
        det = arr.detections[0]
        assert det.id == "object" and M.header_stamp_ns(det) == stamp
        (hyp,) = det.results
        assert hyp.hypothesis.class_id == "cracker_box" and 0.0 <= hyp.hypothesis.score <= 1.0
        np.testing.assert_allclose(M.pose_to_matrix(hyp.pose), M.pose_to_matrix(poses[stamp].pose), atol=1e-9)
        np.testing.assert_allclose(hyp.pose.covariance, poses[stamp].pose.covariance, rtol=1e-9, atol=1e-15)
        assert np.all(np.diag(np.asarray(hyp.pose.covariance).reshape(6, 6)) > 0)
        assert det.bbox.size.z > 0.05
        scores.append(hyp.hypothesis.score)
    # tracking with the centre and fingertips of ground truth (ADD-S ~0.4 cm): well above the middle
    assert np.median(scores[len(scores) // 2:]) > 0.6, scores
    status = {M.header_stamp_ns(s): s for s in got["status"]}
    assert all(status[M.header_stamp_ns(a)].state_name == "TRACKING" for a in got["det"])

    # the contact map at the published pose: the grasp's fingers, points near the object
    held = [c for c in got["contacts"] if c.contacts]
    assert len(held) >= len(got["contacts"]) // 2 and len(got["contacts"]) >= n - 2
    last = held[-1]
    T = M.pose_to_matrix(poses[M.header_stamp_ns(last)].pose)
    for c in last.contacts:
        p_obj = np.array([c.point_object.x, c.point_object.y, c.point_object.z])
        p_cam = np.array([c.point_camera.x, c.point_camera.y, c.point_camera.z])
        np.testing.assert_allclose(T[:3, :3] @ p_obj + T[:3, 3], p_cam, atol=1e-9)
        assert c.signed_distance < last.contact_threshold and np.all(np.isfinite(c.point_covariance))
    assert {c.finger for c in last.contacts} & {0}, [c.link for c in last.contacts]
    # markers: mesh (at least once), covariance ellipsoid, contacts
    ns = {m.ns for arr in got["markers"] for m in arr.markers}
    assert {"object", "covariance", "contacts", "fingertips_fk"} <= ns, ns

    # vision_info is latched: a subscriber created now still receives it
    info = []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ros_node.create_subscription(VisionInfo, graph.TOPICS["vision_info"], info.append, latched)
    assert spin_until(ros_node, lambda: bool(info), timeout=15)
    assert "hp_ros" in info[0].method and info[0].database_location == "builtin:cracker_box"
    # diagnostics in diagnostic_updater's conventions: "<node>: <task>", a hardware id, the pose
    # rate against 30 Hz and the frames' delays (the replay ran at the recorded rate)
    statuses = {}
    for arr in got["diag"]:
        for st in arr.status:
            statuses.setdefault(st.name, []).append(st)
    assert {"tracking_node: tracking", "tracking_node: pose rate", "tracking_node: frame stamps"} <= statuses.keys()
    assert all(st.hardware_id == "object" for sts in statuses.values() for st in sts)
    rate = [{kv.key: kv.value for kv in st.values} for st in statuses["tracking_node: pose rate"]]
    assert max(float(v["Actual frequency (Hz)"]) for v in rate) > 10 and rate[-1]["Target frequency (Hz)"] == "30.0"
    stamps = [{kv.key: kv.value for kv in st.values} for st in statuses["tracking_node: frame stamps"]]
    assert any(v["Events in period"] != "0" for v in stamps) and "Latest timestamp delay" in stamps[-1]
    assert node.alive()
