"""Node plumbing: joint-state buffering/interpolation, time going backwards, tf_static chains,
parameter validation."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import JointState  # noqa: E402

from hp_ros.core.hand import HandModel  # noqa: E402
from hp_ros.nodes.buffers import JointStateBuffer  # noqa: E402
from hp_ros.nodes.calibration import CameraToHand  # noqa: E402
from hp_ros.nodes.loaders import camera_to_hand_from_param  # noqa: E402


@pytest.fixture(scope="module")
def hand():
    return HandModel.default()


def js(names, q, t_ns):
    m = JointState()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(t_ns), 1_000_000_000)
    m.name = list(names)
    m.position = [float(v) for v in q]
    return m


def test_interpolation_and_reordering(hand):
    buf = JointStateBuffer(hand.joint_state_mapper())
    names = hand.joint_names
    assert buf.add(js(names, np.zeros(16), 1_000_000_000))
    assert buf.add(js(names, np.ones(16), 1_020_000_000))
    # slightly out of order: inserted in place
    assert buf.add(js(names, np.full(16, 0.5), 1_010_000_000))
    np.testing.assert_allclose(buf.at(1_005_000_000), np.full(16, 0.25))
    np.testing.assert_allclose(buf.at(1_015_000_000), np.full(16, 0.75))
    assert buf.at(2_000_000_000) is None  # beyond the buffer by more than max_gap
    # late beyond the reorder window: refused (counted by the node under its kind), nothing changes
    with pytest.raises(ValueError, match="late") as e:
        buf.add(js(names, np.full(16, 9.0), 900_000_000))
    assert e.value.kind == "joint_states_late"
    assert len(buf.stamps) == 3 and not buf.reset_pending


def test_time_jump_back_resets(hand):
    buf = JointStateBuffer(hand.joint_state_mapper())
    names = hand.joint_names
    for k in range(5):
        buf.add(js(names, np.full(16, k * 0.1), 10_000_000_000 + k * 10_000_000))
    assert buf.add(js(names, np.zeros(16), 1_000_000_000))  # bag looped
    assert buf.reset_pending and buf.stamps == [1_000_000_000]


def test_malformed_message_from_the_past_clears_nothing(hand):
    """An old stamp with unknown names is rejected before the time check acts on it: the
    buffer (and the tracker that owns it) is not reset by a message that was never valid."""
    buf = JointStateBuffer(hand.joint_state_mapper())
    for k in range(5):
        buf.add(js(hand.joint_names, np.full(16, k * 0.1), 10_000_000_000 + k * 10_000_000))
    with pytest.raises(ValueError, match="unknown joint names"):
        buf.add(js(["not_a_joint"] * 16, np.zeros(16), 0))
    with pytest.raises(ValueError, match="non-finite"):
        buf.add(js(hand.joint_names, np.full(16, np.nan), 0))
    assert len(buf.stamps) == 5 and not buf.reset_pending


def test_simlab_subset_messages_and_unknown_names(hand):
    buf = JointStateBuffer(hand.joint_state_mapper())
    simlab = [f"joint_{i}.0" for i in range(16)]
    q = np.linspace(0.0, 0.3, 16)
    assert not buf.add(js(simlab[:8], q[:8], 1_000_000_000))  # incomplete: not stored yet
    assert buf.add(js(simlab[8:], q[8:], 1_001_000_000))
    full = buf.latest()[1]
    # SimLab index finger joint_0.0 is Wonik ah_joint10
    assert full[hand.joint_names.index("ah_joint10")] == pytest.approx(q[0])
    with pytest.raises(ValueError, match="unknown joint names"):
        buf.add(js(["bogus_joint"], [0.0], 1_002_000_000))


def test_tf_static_chain_resolution():
    from tf2_msgs.msg import TFMessage
    from geometry_msgs.msg import TransformStamped

    from hp_ros.io import msgs

    def T(x, yaw):
        c, s = np.cos(yaw), np.sin(yaw)
        M = np.eye(4)
        M[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
        M[:3, 3] = [x, 0.1, 0.2]
        return M

    T_world_cam, T_world_base, T_base_palm = T(1.0, 0.3), T(-0.5, -0.2), T(0.0, 0.1)
    c2h = CameraToHand.__new__(CameraToHand)
    c2h.camera_frame, c2h.hand_frame, c2h.fixed, c2h._edges, c2h._value = "cam", "ah_palm_link", None, {}, None
    c2h._logger = rclpy.logging.get_logger("test_tf_static")
    from hp_ros.core.ekf.hand_base import HandBaseTrack
    from hp_ros.core.tf_buffer import TransformBuffer

    c2h.buffer, c2h._tf_reader, c2h._wanted = TransformBuffer(), None, {"cam", "ah_palm_link"}
    c2h.track = HandBaseTrack(c2h.buffer, "cam", "ah_palm_link")
    tfm = msgs.make_tf_message([
        msgs.make_transform_stamped(T_world_cam, 0, "world", "cam", TransformStamped),
        msgs.make_transform_stamped(T_world_base, 0, "world", "ah_base_link", TransformStamped),
        msgs.make_transform_stamped(T_base_palm, 0, "ah_base_link", "ah_palm_link", TransformStamped),
    ], TFMessage)
    c2h._on_tf_static(tfm)
    expected = np.linalg.inv(T_world_cam) @ T_world_base @ T_base_palm
    np.testing.assert_allclose(c2h.T_cam_hand, expected, atol=1e-9)
    # the same chain with the hand base on /tf (an arm): interpolated at a stamp, newest held
    c2h._edges, c2h._value = {}, None
    c2h._on_tf_static(msgs.make_tf_message([msgs.make_transform_stamped(T_world_cam, 0, "world", "cam",
                                                                        TransformStamped)], TFMessage))
    for stamp, x in ((10**9, -0.5), (2 * 10**9, -0.3)):
        c2h._on_tf(msgs.make_tf_message([
            msgs.make_transform_stamped(T(x, -0.2), stamp, "world", "ah_base_link", TransformStamped),
            msgs.make_transform_stamped(T_base_palm, stamp, "ah_base_link", "ah_palm_link", TransformStamped),
            msgs.make_transform_stamped(np.eye(4), stamp, "cam", "object", TransformStamped)], TFMessage))
    np.testing.assert_allclose(c2h.at(1_500_000_000), np.linalg.inv(T_world_cam) @ T(-0.4, -0.2) @ T_base_palm,
                               atol=1e-9)
    assert "object" not in c2h.buffer._edges   # not on the camera->hand chain: not converted


def test_camera_to_hand_parameter():
    assert camera_to_hand_from_param([0.0]) is None
    T = camera_to_hand_from_param([0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 2.0])  # unnormalised quaternion
    np.testing.assert_allclose(T[:3, 3], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(T[:3, :3], np.eye(3), atol=1e-12)


@pytest.mark.ros
def test_invalid_parameter_stops_node_with_one_line(ros_env):
    """run_node: a start-up error is one readable line and exit code 2, not a traceback."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "hp_ros.nodes.tracking_node", "--ros-args",
                          "-p", "object_units:=inches"], env=ros_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "tracking_node: invalid parameters: object_units" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_node_processes_compute_on_one_thread():
    """A node process (hp_ros.nodes.process.run_nodes) sets torch and OpenCV to one thread each:
    their pools split small per-frame work over the second core and cost more CPU than they save
    (checked in a fresh interpreter: the libraries' defaults there are the machine's cores)."""
    import subprocess
    import sys

    code = ("import cv2, torch; from hp_ros.nodes.process import _one_compute_thread; "
            "before = (cv2.getNumThreads(), torch.get_num_threads()); _one_compute_thread(); "
            "print(before, (cv2.getNumThreads(), torch.get_num_threads()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().endswith("(1, 1)"), out.stdout + out.stderr


def test_node_log_lines_name_their_caller_on_rosout(ros_env):
    """GuardedNode's logger (FastLogger: the caller from the frame, not rclpy's inspect lookup)
    puts the calling function, file and line on /rosout as rclpy's own does; filtered calls
    (throttle) still go through rclpy."""
    import inspect
    import time

    from rcl_interfaces.msg import Log
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from hp_ros.nodes.guard import GuardedNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = GuardedNode("hp_ros_test_logger", context=ctx)
    probe = rclpy.create_node("hp_ros_test_rosout", context=ctx)
    got = []
    probe.create_subscription(Log, "/rosout", got.append, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(probe)
    try:
        deadline = time.monotonic() + 30.0
        while probe.count_publishers("/rosout") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        line = inspect.currentframe().f_lineno + 1
        node.get_logger().info("plain line")
        for _ in range(2):  # the second within 5 s of the first: dropped
            node.get_logger().warning("throttled line", throttle_duration_sec=5.0)
        deadline = time.monotonic() + 30.0
        while len([m for m in got if m.name == node.get_logger().name]) < 2 and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.1)
        ex.spin_once(timeout_sec=0.3)
        mine = {m.msg: m for m in got if m.name == node.get_logger().name}
        assert set(mine) == {"plain line", "throttled line"}
        plain = mine["plain line"]
        assert plain.level == Log.INFO and plain.line == line and plain.function == inspect.currentframe().f_code.co_name
        assert plain.file.endswith("test_node_common.py")
        assert mine["throttled line"].level == Log.WARN and mine["throttled line"].line == line + 2
        assert sum(m.msg == "throttled line" for m in got) == 1
    finally:
        ex.shutdown()
        probe.destroy_node()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
