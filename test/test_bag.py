"""rosbag2 round trip (MCAP and sqlite3) and the message conversions used to fill bags."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hp_ros.io import bag as B
from hp_ros.io import msgs as M

K = np.array([[615.3, 0.0, 321.2], [0.0, 615.9, 238.7], [0.0, 0.0, 1.0]])
JOINTS = [f"ah_joint{f}{j}" for f in range(4) for j in range(4)]


def _pose(seed: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    T[:3, 3] = np.random.default_rng(seed).normal(size=3)
    return T


def _write_sequence(path, storage, n=3):
    """Write a small hp_ros-style bag; returns the list of what was written."""
    rng = np.random.default_rng(0)
    written = []
    with B.BagWriter(path, storage=storage) as bag:
        Image = bag.msg_class("sensor_msgs/msg/Image")
        Info = bag.msg_class("sensor_msgs/msg/CameraInfo")
        JS = bag.msg_class("sensor_msgs/msg/JointState")
        PS = bag.msg_class("geometry_msgs/msg/PoseStamped")
        TS = bag.msg_class("geometry_msgs/msg/TransformStamped")
        TF = bag.msg_class("tf2_msgs/msg/TFMessage")

        def put(topic, typ, msg, t):
            bag.write(topic, typ, msg, t)
            written.append((topic, typ, t, msg))

        t0 = 1_700_000_000_000_000_000
        tf = M.make_tf_message([M.make_transform_stamped(_pose(99), t0, "camera_color_optical_frame",
                                                         "ah_palm_link", TS)], TF)
        put(B.TOPIC_TF_STATIC, "tf2_msgs/msg/TFMessage", tf, t0)
        for i in range(n):
            t = t0 + i * 33_333_333
            rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            depth = rng.integers(0, 5000, (48, 64)).astype(np.uint16)
            mask = (rng.random((48, 64)) > 0.5).astype(np.uint8) * 255
            put(B.TOPIC_COLOR_IMAGE, "sensor_msgs/msg/Image",
                M.numpy_to_image(rgb, "rgb8", t, "camera_color_optical_frame", Image), t)
            put(B.TOPIC_COLOR_INFO, "sensor_msgs/msg/CameraInfo",
                M.make_camera_info(K, 640, 480, Info, stamp_ns=t), t)  # the intrinsics' own image size
            put(B.TOPIC_DEPTH_IMAGE, "sensor_msgs/msg/Image",
                M.numpy_to_image(depth, "16UC1", t, "camera_color_optical_frame", Image), t + 1)
            put(B.TOPIC_GT_OBJECT_MASK, "sensor_msgs/msg/Image",
                M.numpy_to_image(mask, "mono8", t, "camera_color_optical_frame", Image), t + 2)
            put(B.TOPIC_GT_OBJECT_POSE, "geometry_msgs/msg/PoseStamped",
                M.make_pose_stamped(_pose(i), t, "camera_color_optical_frame", PS), t + 3)
            for k in range(3):  # joint states at ~100 Hz
                tj = t + k * 10_000_000 + 5
                put(B.TOPIC_JOINT_STATES, "sensor_msgs/msg/JointState",
                    M.make_joint_state(JOINTS, rng.normal(size=16), tj, JS), tj)
    return written


def _assert_msg_equal(a, b, where=""):
    """Field-by-field equality of two rosbags messages (classes may come from different stores)."""
    assert a.__msgtype__ == b.__msgtype__, where
    for name in a.__dataclass_fields__:
        va, vb = getattr(a, name), getattr(b, name)
        if hasattr(va, "__dataclass_fields__"):
            _assert_msg_equal(va, vb, f"{where}.{name}")
        elif isinstance(va, np.ndarray):
            assert isinstance(vb, np.ndarray) and va.dtype == vb.dtype, f"{where}.{name}"
            np.testing.assert_array_equal(va, vb, err_msg=f"{where}.{name}")
        elif isinstance(va, list) and va and hasattr(va[0], "__dataclass_fields__"):
            assert len(va) == len(vb)
            for i, (x, y) in enumerate(zip(va, vb)):
                _assert_msg_equal(x, y, f"{where}.{name}[{i}]")
        else:
            assert va == vb, f"{where}.{name}: {va!r} != {vb!r}"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_identical(tmp_path, storage):
    path = tmp_path / f"seq_{storage}"
    written = _write_sequence(path, storage)
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert any(p.suffix == suffix for p in path.iterdir())
    assert (path / "metadata.yaml").is_file()

    read = list(B.read_bag(path))
    assert len(read) == len(written)
    # receive-time order; the writer wrote in non-decreasing time order per topic
    assert [r[2] for r in read] == sorted(r[2] for r in read)
    by_key = {(w[0], w[2]): w for w in written}
    for topic, typ, t, msg in read:
        w = by_key[(topic, t)]
        assert typ == w[1]
        _assert_msg_equal(msg, w[3], topic)

    # raw CDR bytes identical to serialising the written messages again
    store = B.make_typestore()
    for topic, typ, t, data in B.read_bag(path, raw=True):
        assert data == bytes(store.serialize_cdr(by_key[(topic, t)][3], typ))

    # decoded payloads
    imgs = [M.image_to_numpy(m) for tp, _, _, m in read if tp == B.TOPIC_COLOR_IMAGE]
    assert len(imgs) == 3 and imgs[0].shape == (48, 64, 3) and imgs[0].dtype == np.uint8
    gt = [(M.header_stamp_ns(m), M.pose_to_matrix(m)) for tp, _, _, m in read if tp == B.TOPIC_GT_OBJECT_POSE]
    for i, (_, T) in enumerate(gt):
        np.testing.assert_allclose(T, _pose(i), atol=1e-12)
    tf = [m for tp, _, _, m in read if tp == B.TOPIC_TF_STATIC][0]
    (T, parent, child, _), = M.tf_message_to_list(tf)
    assert (parent, child) == ("camera_color_optical_frame", "ah_palm_link")
    np.testing.assert_allclose(T, _pose(99), atol=1e-12)
    info = M.camera_info_to_intrinsics([m for tp, _, _, m in read if tp == B.TOPIC_COLOR_INFO][0])
    np.testing.assert_array_equal(info.K, K)


def test_topic_filter_and_summary(tmp_path):
    path = tmp_path / "b"
    written = _write_sequence(path, "mcap", n=2)
    only = list(B.read_bag(path, topics=[B.TOPIC_JOINT_STATES]))
    assert len(only) == 6 and {r[0] for r in only} == {B.TOPIC_JOINT_STATES}
    s = B.bag_summary(path)
    assert s.storage == "mcap"
    assert s.counts[B.TOPIC_JOINT_STATES] == 6 and s.message_count == len(written)
    assert s.topics[B.TOPIC_GT_OBJECT_POSE] == "geometry_msgs/msg/PoseStamped"
    assert s.start_ns == min(w[2] for w in written)
    assert B.TOPIC_COLOR_IMAGE in str(s)


def test_extra_message_definitions(tmp_path):
    text = "std_msgs/Header header\nfloat64 score\nstring[] labels\n"
    path = tmp_path / "custom"
    with B.BagWriter(path, extra_msgs={"hp_ros_msgs/msg/TestScore": text}) as bag:
        cls = bag.msg_class("hp_ros_msgs/msg/TestScore")
        Header = M.field_class(cls, "header")
        msg = cls(header=M.make_header(Header, 7, "f"), score=0.25, labels=["a", "b"])
        bag.write("/score", "hp_ros_msgs/msg/TestScore", msg, 7)
    (topic, typ, t, back), = list(B.read_bag(path))  # types come from the bag itself
    assert (topic, typ, t, back.score, back.labels, back.header.frame_id) == \
        ("/score", "hp_ros_msgs/msg/TestScore", 7, 0.25, ["a", "b"], "f")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="storage"):
        B.BagWriter(tmp_path / "x", storage="rosbag1")
    with pytest.raises(FileNotFoundError, match="bag not found"):
        list(B.read_bag(tmp_path / "missing"))
    path = tmp_path / "b"
    _write_sequence(path, "mcap", n=1)
    with pytest.raises(B.BagError, match="exists"):
        B.BagWriter(path)
    with pytest.raises(B.BagError, match="not in bag"):
        list(B.read_bag(path, topics=["/nope"]))
    with B.BagWriter(tmp_path / "c") as bag:
        with pytest.raises(ValueError, match="unknown message type"):
            bag.write("/a", "nope_msgs/msg/X", b"", 0)


# ----------------------------------------------------------------------------- msgs helpers


def _flavours():
    import sensor_msgs.msg as sm
    rb = B.msg_class("sensor_msgs/msg/Image")
    return [rb, sm.Image]


@pytest.mark.parametrize("flavour", ["rosbags", "rclpy"])
@pytest.mark.parametrize("encoding,shape,dtype", [
    ("rgb8", (5, 7, 3), np.uint8), ("bgra8", (5, 7, 4), np.uint8), ("mono8", (5, 7), np.uint8),
    ("16UC1", (5, 7), np.uint16), ("32FC1", (5, 7), np.float32),
])
def test_image_conversion(flavour, encoding, shape, dtype):
    cls = _flavours()[0 if flavour == "rosbags" else 1]
    rng = np.random.default_rng(1)
    arr = (rng.random(shape) * 200).astype(dtype)
    msg = M.numpy_to_image(arr, encoding, 1_234_567_890_123, "cam", cls)
    assert M.msg_type_name(msg) == "sensor_msgs/msg/Image"
    assert msg.step == shape[1] * (shape[2] if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1234, 567_890_123)
    back = M.image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, arr)


def test_image_padding_bigendian_and_errors():
    cls = B.msg_class("sensor_msgs/msg/Image")
    Header = M.field_class(cls, "header")
    arr = np.arange(6, dtype=np.uint16).reshape(2, 3) * 300
    rows = np.zeros((2, 8), np.uint8)  # 6 data bytes + 2 padding per row, big-endian
    rows[:, :6] = arr.astype(">u2").view(np.uint8).reshape(2, 6)
    msg = cls(header=M.make_header(Header, 0, ""), height=2, width=3, encoding="16UC1",
              is_bigendian=1, step=8, data=rows.reshape(-1))
    np.testing.assert_array_equal(M.image_to_numpy(msg), arr)
    msg.step = 4
    with pytest.raises(ValueError, match="step"):
        M.image_to_numpy(msg)
    msg.step, msg.data = 8, rows.reshape(-1)[:-1]
    with pytest.raises(ValueError, match="bytes"):
        M.image_to_numpy(msg)
    with pytest.raises(ValueError, match="unsupported image encoding"):
        M.numpy_to_image(np.zeros((2, 2, 3), np.uint8), "yuv422", 0, "", cls)
    with pytest.raises(ValueError, match="dtype"):
        M.numpy_to_image(np.zeros((2, 2), np.float64), "32FC1", 0, "", cls)
    with pytest.raises(ValueError, match="shape"):
        M.numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8", 0, "", cls)


@pytest.mark.parametrize("flavour", ["rosbags", "rclpy"])
def test_pose_covariance_joint_camera(flavour):
    if flavour == "rclpy":
        import geometry_msgs.msg as gm
        import sensor_msgs.msg as sm
        PWC, TS, JS, CI = gm.PoseWithCovarianceStamped, gm.TransformStamped, sm.JointState, sm.CameraInfo
    else:
        PWC, TS, JS, CI = (B.msg_class(n) for n in (
            "geometry_msgs/msg/PoseWithCovarianceStamped", "geometry_msgs/msg/TransformStamped",
            "sensor_msgs/msg/JointState", "sensor_msgs/msg/CameraInfo"))
    T = _pose(3)
    A = np.random.default_rng(2).normal(size=(6, 6))
    cov = A @ A.T
    msg = M.make_pose_with_covariance_stamped(T, cov, 42, "camera", PWC)
    np.testing.assert_allclose(M.pose_to_matrix(msg), T, atol=1e-12)
    np.testing.assert_array_equal(M.covariance_from_msg(msg), cov)
    assert msg.pose.covariance[1] == cov[0, 1]  # row-major
    q = msg.pose.pose.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], Rotation.from_matrix(T[:3, :3]).as_quat()
                               * np.sign(Rotation.from_matrix(T[:3, :3]).as_quat()[3]), atol=1e-12)
    Tt, parent, child, stamp = M.transform_stamped_to_matrix(M.make_transform_stamped(T, 5, "a", "b", TS))
    np.testing.assert_allclose(Tt, T, atol=1e-12)
    assert (parent, child, stamp) == ("a", "b", 5)
    names, pos, st = M.joint_state_to_numpy(M.make_joint_state(JOINTS, np.arange(16.0), 9, JS))
    assert names == JOINTS and st == 9
    np.testing.assert_array_equal(pos, np.arange(16.0))
    intr = M.camera_info_to_intrinsics(M.make_camera_info(K, 640, 480, CI, stamp_ns=3))
    np.testing.assert_array_equal(intr.K, K)
    assert (intr.width, intr.height, intr.stamp_ns) == (640, 480, 3)
    np.testing.assert_array_equal(intr.P[:, :3], K)
    with pytest.raises(ValueError, match="rotation"):
        M.make_pose_with_covariance_stamped(np.diag([2.0, 1, 1, 1]), cov, 0, "", PWC)
    with pytest.raises(ValueError, match="symmetric"):
        M.make_pose_with_covariance_stamped(T, A, 0, "", PWC)
    with pytest.raises(ValueError, match="names"):
        M.make_joint_state(JOINTS[:3], np.zeros(4), 0, JS)


def test_quaternion_of_a_pose_matches_scipy_in_every_branch():
    """The published quaternion (x, y, z, w; w >= 0) against scipy's, over random rotations and the
    half turns about each axis (each branch of the conversion: trace, then the largest diagonal)."""
    Rs = list(Rotation.random(2000, random_state=3).as_matrix())
    Rs += [Rotation.from_rotvec(np.pi * np.eye(3)[k]).as_matrix() for k in range(3)]
    Rs += [Rotation.from_rotvec((np.pi - 1e-3) * np.array(a) / np.linalg.norm(a)).as_matrix()
           for a in ([1, 0.1, 0], [0.1, 1, 0.2], [0, 0.2, 1])]
    for R in Rs:
        T = np.eye(4)
        T[:3, :3] = R
        q, ref = M._quat_xyzw(T), Rotation.from_matrix(R).as_quat()
        ref = -ref if ref[3] < 0 else ref
        if abs(ref[3]) < 1e-9:  # a half turn: q and -q are the same rotation with w = 0
            assert min(np.abs(q - ref).max(), np.abs(q + ref).max()) < 1e-12
        else:
            np.testing.assert_allclose(q, ref, atol=1e-12)


def test_stamps():
    Time = M.field_class(M.field_class(B.msg_class("sensor_msgs/msg/Image"), "header"), "stamp")
    s = M.ns_to_stamp(3_000_000_007, Time)
    assert (s.sec, s.nanosec) == (3, 7) and M.stamp_to_ns(s) == 3_000_000_007
    assert M.stamp_to_sec(s) == pytest.approx(3.000000007)
    assert M.sec_to_ns(1.5) == 1_500_000_000
    with pytest.raises(ValueError, match="negative"):
        M.ns_to_stamp(-1, Time)
