"""Environment smoke test: a separate hp_ros node process publishes over DDS, we subscribe."""
from __future__ import annotations

import math

import pytest

from hp_ros.ros_process import python_module_cmd

pytestmark = pytest.mark.ros


def test_pose_and_tf_arrive_from_separate_process(ros_node, start_process):
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    from rostest_utils import spin_until, wait_for_publishers

    position = [0.12, -0.05, 0.61]
    quat = [0.0, 0.0, math.sin(0.25), math.cos(0.25)]  # 0.5 rad about z
    proc = start_process(python_module_cmd(
        "hp_ros.nodes.pose_smoke_node", "--ros-args",
        "-p", f"position:={position}", "-p", f"orientation:={quat}",
        "-p", "child_frame_id:=cracker_box"))

    poses, tfs = [], []
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    ros_node.create_subscription(PoseWithCovarianceStamped, "/hp_ros/object_pose", poses.append, qos)
    ros_node.create_subscription(TFMessage, "/tf", tfs.append, qos)
    assert wait_for_publishers(ros_node, "/hp_ros/object_pose", timeout=20), proc.log_text()
    assert spin_until(ros_node, lambda: len(poses) >= 3 and len(tfs) >= 3, timeout=20), proc.log_text()

    msg = poses[-1]
    assert msg.header.frame_id == "camera_color_optical_frame"
    got = [msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z]
    assert got == pytest.approx(position, abs=1e-12)
    o = msg.pose.pose.orientation
    assert [o.x, o.y, o.z, o.w] == pytest.approx(quat, abs=1e-12)
    cov = list(msg.pose.covariance)
    assert cov[0] == pytest.approx(0.01 ** 2) and cov[35] == pytest.approx(0.05 ** 2)
    assert all(cov[i * 6 + j] == 0.0 for i in range(6) for j in range(6) if i != j)

    tf = tfs[-1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("camera_color_optical_frame", "cracker_box")
    assert tf.transform.translation.x == pytest.approx(position[0])
    assert proc.alive(), "node died: " + proc.log_text()


def test_loopback_environment_is_applied(ros_env):
    """The harness hands every ROS process loopback-only discovery and its own domain."""
    import os

    assert ros_env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert ros_env["ROS_LOCALHOST_ONLY"] == "1"
    assert 1 <= int(ros_env["ROS_DOMAIN_ID"]) <= 100
    assert os.environ["ROS_DOMAIN_ID"] == ros_env["ROS_DOMAIN_ID"]


def test_suite_runs_in_private_network_namespace():
    """Under `make test` as root, every process lives in a namespace where only lo exists."""
    import os

    from hp_ros.ros_process import in_private_netns

    if os.environ.get("HP_ROS_NETNS") != "1":
        pytest.skip("not started through scripts/run_isolated.sh with namespace support")
    assert in_private_netns()
