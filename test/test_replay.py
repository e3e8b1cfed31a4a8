"""`hp-ros replay` over DDS (loopback only): every message arrives, in order, at the recorded rate."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hp_ros.io import bag as B
from hp_ros.io import msgs as M
from hp_ros.ros_process import python_module_cmd

T0 = 1_700_000_000_000_000_000
JOINTS = [f"ah_joint{f}{j}" for f in range(4) for j in range(4)]


def _write_bag(path, seconds=1.2, joint_hz=50, image_hz=10):
    """Joint states at ``joint_hz`` and 640x480 rgb8 images at ``image_hz``; returns stamps per topic."""
    stamps = {B.TOPIC_JOINT_STATES: [], B.TOPIC_COLOR_IMAGE: []}
    events = [(T0 + int(k * 1e9 / joint_hz), B.TOPIC_JOINT_STATES) for k in range(int(seconds * joint_hz) + 1)]
    events += [(T0 + int(k * 1e9 / image_hz), B.TOPIC_COLOR_IMAGE) for k in range(int(seconds * image_hz) + 1)]
    rng = np.random.default_rng(0)
    with B.BagWriter(path) as bag:
        JS, Image = bag.msg_class("sensor_msgs/msg/JointState"), bag.msg_class("sensor_msgs/msg/Image")
        for t, topic in sorted(events):
            if topic == B.TOPIC_JOINT_STATES:
                msg = M.make_joint_state(JOINTS, rng.normal(size=16), t, JS)
                bag.write(topic, "sensor_msgs/msg/JointState", msg, t)
            else:
                img = np.full((480, 640, 3), len(stamps[topic]) % 256, np.uint8)
                bag.write(topic, "sensor_msgs/msg/Image", M.numpy_to_image(img, "rgb8", t, "cam", Image), t)
            stamps[topic].append(t)
    return stamps


@pytest.mark.ros
@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_replay_delivers_everything_in_order_at_rate(tmp_path, ros_node, start_process, rate):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState

    from rostest_utils import spin_until

    bag = tmp_path / "short"
    stamps = _write_bag(bag)
    n_total = sum(len(v) for v in stamps.values())
    got = {B.TOPIC_JOINT_STATES: [], B.TOPIC_COLOR_IMAGE: []}
    clock = []
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

    def recorder(topic):
        # arrival time as stamped by the middleware, independent of when the executor runs us
        return lambda m, info: got[topic].append((info["received_timestamp"] * 1e-9, M.header_stamp_ns(m), m))

    ros_node.create_subscription(JointState, B.TOPIC_JOINT_STATES, recorder(B.TOPIC_JOINT_STATES), qos)
    ros_node.create_subscription(Image, B.TOPIC_COLOR_IMAGE, recorder(B.TOPIC_COLOR_IMAGE), qos)
    ros_node.create_subscription(Clock, "/clock", lambda m: clock.append(M.stamp_to_ns(m.clock)),
                                 QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE))

    proc = start_process(python_module_cmd(
        "hp_ros.tools.replay", str(bag), "--rate", str(rate), "--clock", "50",
        "--wait-subscribers", "3", "--wait-timeout", "30"), name="replay")
    done = spin_until(ros_node, lambda: sum(len(v) for v in got.values()) >= n_total, timeout=40)
    assert done, f"received {[len(v) for v in got.values()]} of {n_total}: {proc.log_text()}"
    spin_until(ros_node, lambda: not proc.alive(), timeout=10)
    # the executor serves ready subscriptions in creation order, so /clock callbacks may still
    # be queued behind the data: keep spinning until the expected ticks (50 Hz of wall time) are in
    n_ticks = int(50 * 1.2 / rate)
    spin_until(ros_node, lambda: len(clock) >= n_ticks, timeout=5)
    assert proc.proc.returncode == 0, proc.log_text()

    for topic, sent in stamps.items():
        recv = [s for _, s, _ in got[topic]]
        assert recv == sent, f"{topic}: wrong messages or order"
    # payload intact
    img = M.image_to_numpy(got[B.TOPIC_COLOR_IMAGE][3][2])
    assert img.shape == (480, 640, 3) and np.all(img == 3)

    # rate: the slope of arrival time against recorded time / rate, over every message (1 when the
    # replay keeps the rate; a replay at the wrong rate - 1x for 2x, or as fast as it can - is off by
    # 50 % or more). A least-squares slope, not the first-to-last span: on a loaded 2-core machine one
    # late message at either end of the 0.6 s sequence moved the span by more than 10 % (CI reruns)
    arrivals = sorted((t_recv, stamp) for v in got.values() for t_recv, stamp, _ in v)
    t_arr = np.array([a for a, _ in arrivals])
    s_arr = np.array([b for _, b in arrivals], dtype=np.float64) * 1e-9 / rate
    slope = np.polyfit(s_arr - s_arr[0], t_arr - t_arr[0], 1)[0]
    assert slope == pytest.approx(1.0, rel=0.2), slope
    # and per image: arrival time of each image against its recorded offset
    t_img = np.array([t for t, _, _ in got[B.TOPIC_COLOR_IMAGE]])
    s_img = (np.array(stamps[B.TOPIC_COLOR_IMAGE]) - T0) * 1e-9 / rate
    np.testing.assert_allclose(t_img - t_img[0], s_img - s_img[0], atol=0.2 * s_img[-1])

    # /clock: bag time, monotonic, inside the bag's span
    assert len(clock) >= n_ticks, f"only {len(clock)} /clock messages: {proc.log_text()}"
    assert all(b >= a for a, b in zip(clock, clock[1:]))
    assert T0 <= clock[0] and clock[-1] <= max(stamps[B.TOPIC_JOINT_STATES]) + 50_000_000


def test_replay_missing_bag_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hp_ros.tools.replay", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "bag not found" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_replay_rejects_bad_rate(tmp_path):
    bag = tmp_path / "b"
    _write_bag(bag, seconds=0.1)
    r = subprocess.run([sys.executable, "-m", "hp_ros.tools.replay", str(bag), "--rate", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--rate" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.ros
def test_replay_resends_tf_static_and_gives_each_topic_its_own_participant(tmp_path, ros_node, start_process):
    """/tf_static (once in the bag) is re-sent every --static-period seconds, and the camera's
    topics and the joint states come from separate participants (nodes): small topics written
    next to 1 MB images by one Fast DDS participant were measured arriving in 0.3-1.5 s batches."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from tf2_msgs.msg import TFMessage

    from hp_ros.nodes.qos import TF_STATIC_QOS
    from rostest_utils import spin_until

    bag = tmp_path / "static"
    stamps = {B.TOPIC_JOINT_STATES: [], B.TOPIC_COLOR_IMAGE: []}
    with B.BagWriter(bag) as w:
        TF, TS = w.msg_class("tf2_msgs/msg/TFMessage"), w.msg_class("geometry_msgs/msg/TransformStamped")
        JS, Img = w.msg_class("sensor_msgs/msg/JointState"), w.msg_class("sensor_msgs/msg/Image")
        w.write(B.TOPIC_TF_STATIC, "tf2_msgs/msg/TFMessage",
                M.make_tf_message([M.make_transform_stamped(np.eye(4), T0, "cam", "hand", TS)], TF), T0)
        for k in range(201):  # 2 s of joint states at 100 Hz, images at 10 Hz
            t = T0 + k * 10_000_000
            w.write(B.TOPIC_JOINT_STATES, "sensor_msgs/msg/JointState", M.make_joint_state(JOINTS, np.zeros(16), t, JS), t)
            if k % 10 == 0:
                w.write(B.TOPIC_COLOR_IMAGE, "sensor_msgs/msg/Image",
                        M.numpy_to_image(np.zeros((48, 64, 3), np.uint8), "rgb8", t, "cam", Img), t)
    got = {"tf": 0, "js": 0, "img": 0}
    ros_node.create_subscription(TFMessage, "/tf_static", lambda m: got.__setitem__("tf", got["tf"] + 1), TF_STATIC_QOS)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    ros_node.create_subscription(JointState, B.TOPIC_JOINT_STATES, lambda m: got.__setitem__("js", got["js"] + 1), qos)
    ros_node.create_subscription(Image, B.TOPIC_COLOR_IMAGE, lambda m: got.__setitem__("img", got["img"] + 1), qos)
    proc = start_process(python_module_cmd("hp_ros.tools.replay", str(bag), "--static-period", "0.5",
                                           "--wait-subscribers", "3", "--wait-timeout", "30"), name="replay")
    assert spin_until(ros_node, lambda: got["js"] >= 201 and got["img"] >= 21, timeout=40), (got, proc.log_text())
    # publishers of each topic, by node: the replay's camera topic and joint states differ
    writers = {t: {i.node_name for i in ros_node.get_publishers_info_by_topic(t)}
               for t in (B.TOPIC_JOINT_STATES, B.TOPIC_COLOR_IMAGE, "/tf_static")}
    spin_until(ros_node, lambda: not proc.alive(), timeout=10)
    assert proc.proc.returncode == 0, proc.log_text()
    assert len(writers[B.TOPIC_JOINT_STATES]) == 1 and len(writers[B.TOPIC_COLOR_IMAGE]) == 1, writers
    assert writers[B.TOPIC_JOINT_STATES] != writers[B.TOPIC_COLOR_IMAGE], writers
    assert writers["/tf_static"] == writers[B.TOPIC_JOINT_STATES], writers  # the robot's participant
    # once as recorded + every 0.5 s of the 2 s replay
    assert got["tf"] >= 4, got
