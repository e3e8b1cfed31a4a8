"""Malformed messages for every input of the graph, for the fuzz tests (issue 28).

Each ``bad_<input>(pick, now_ns)`` builds one malformed message of that input from choices made
by ``pick(n) -> int in [0, n)``: a hypothesis ``draw`` in the in-process property tests
(:func:`hypothesis_pick`), a seeded numpy generator in the end-to-end burst (:func:`rng_pick`).
``now_ns`` is the stream's current stamp, so bad stamps are drawn around it (zero, negative, far
past, far future, seconds back, a little late). Images are small unless the case needs a real size.
"""
from __future__ import annotations

import math

import numpy as np

from hp_ros import graph
from hp_ros.io import msgs as M

FRAME = graph.CAMERA_FRAME
S = 1_000_000_000
WEIRD = [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, -1e-300, 1e9]
NONFINITE = WEIRD[:3]
NAMES = [f"ah_joint{f}{j}" for f in range(4) for j in range(4)]
K = np.array([[615.0, 0.0, 320.0], [0.0, 615.0, 240.0], [0.0, 0.0, 1.0]])
ENCODINGS = ["yuv422", "bayer_rggb8", "", "RGB8", "16SC1", "64FC1", "rgb8\x00", "jpeg", "8UC3", "mono16"]


def rng_pick(rng):
    return lambda n: int(rng.integers(n))


def hypothesis_pick(draw):
    from hypothesis import strategies as st

    return lambda n: draw(st.integers(0, n - 1))


def bad_stamp(pick, now_ns: int) -> int:
    """A stamp a driver should never send here: 0, far past, far future, 1-3 s back, 2-3 s ahead."""
    return [0, 1, now_ns - 3600 * S, now_ns + 3600 * S, now_ns - S - pick(2 * S), now_ns + 2 * S + pick(S),
            2 ** 62][pick(7)]


def _stamp(msg, t: int) -> None:
    t = max(int(t), -(2 ** 31) * S)
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t // S), int(t % S)


def bad_image(pick, now_ns: int, depth: bool = False):
    from sensor_msgs.msg import Image

    case = pick(8)
    w, h = (640, 480) if case == 0 else (8 + pick(8), 6 + pick(6))
    enc = "16UC1" if depth else "rgb8"
    arr = np.zeros((h, w), np.uint16) if depth else np.zeros((h, w, 3), np.uint8)
    m = M.numpy_to_image(arr, enc, max(1, now_ns), FRAME, Image)
    if case == 0:          # the right size, a bad stamp
        _stamp(m, bad_stamp(pick, now_ns))
    elif case == 1:        # unknown encoding (endless variety)
        m.encoding = ENCODINGS[pick(len(ENCODINGS))] + str(pick(10_000))
    elif case == 2:        # a size that is not the camera's
        pass
    elif case == 3:        # a huge declared size, tiny data
        m.width, m.height, m.step = 100_000, 100_000, 300_000
    elif case == 4:        # data shorter than step * height
        m.data = bytes(m.data)[: len(m.data) // 2]
    elif case == 5:        # step smaller than a row
        m.step = 1
    elif case == 6:        # another frame
        m.header.frame_id = "somewhere_else_" + str(pick(1000))
    else:                  # NaN depth (32FC1) / colour stamped zero
        if depth:
            m = M.numpy_to_image(np.full((h, w), np.nan, np.float32), "32FC1", max(1, now_ns), FRAME, Image)
        else:
            _stamp(m, 0)
    return m


def bad_camera_info(pick, now_ns: int):
    from sensor_msgs.msg import CameraInfo

    m = M.make_camera_info(K, 640, 480, CameraInfo, stamp_ns=max(1, now_ns), frame_id=FRAME)
    k = K.ravel().copy()
    case = pick(9)
    if case == 0:
        k[[0, 2, 4, 5, 8][pick(5)]] = NONFINITE[pick(3)]
        m.k = k
    elif case == 1:
        m.width, m.height = [(100_000, 100_000), (0, 0), (2 ** 31 - 1, 1)][pick(3)]
    elif case == 2:
        m.distortion_model = ["kannala_brandt", "", "fisheye", "plumb_bob "][pick(4)] + str(pick(100))
    elif case == 3:
        m.d = np.array([0.1, NONFINITE[pick(3)], 0.0, 0.0, 0.0])
    elif case == 4:
        m.header.frame_id = "camera_" + str(pick(1000))
    elif case == 5:        # uncalibrated
        m.k, m.p = np.zeros(9), np.zeros(12)
    elif case == 6:
        m.p = np.full(12, WEIRD[pick(3)])
    else:
        _stamp(m, bad_stamp(pick, now_ns))
    return m


def bad_joint_state(pick, now_ns: int):
    from sensor_msgs.msg import JointState

    q = np.zeros(16)
    m = M.make_joint_state(NAMES, q, max(1, now_ns), JointState)
    case = pick(6)
    if case == 0:
        return JointState()
    if case == 1:
        bad = pick(16)
        m.position = [NONFINITE[pick(3)] if i == bad else 0.0 for i in range(16)]
    elif case == 2:
        m.name = [f"joint_{pick(100_000)}"] * 16
    elif case == 3:
        m.position = [0.0] * pick(16)
    elif case == 4:
        m.name = NAMES[:8] + NAMES[:8]
    elif pick(2):
        _stamp(m, bad_stamp(pick, now_ns))
    else:  # 0.2 s late
        _stamp(m, now_ns - 200_000_000)
    return m


def bad_tf_static(pick, now_ns: int):
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = M.make_transform_stamped(np.eye(4), max(1, now_ns), FRAME, "ah_palm_link", TransformStamped)
    r, p = t.transform.rotation, t.transform.translation
    case = pick(5)
    if case == 0:
        r.x, r.y, r.z, r.w = 0.0, 0.0, 0.0, 0.0
    elif case == 1:
        r.x = WEIRD[pick(3)]
    elif case == 2:
        p.x = WEIRD[pick(3)]
    elif case == 3:
        p.z = 1e12
    else:  # an endless variety of unrelated frames (also harmless: they must not grow memory)
        t.header.frame_id, t.child_frame_id = f"frame_{pick(100_000)}", f"frame_{pick(100_000)}"
    return TFMessage(transforms=[t])


def bad_hand_alignment(pick, now_ns: int):
    """A TransformStamped on /hp_ros/hand_alignment: a bad quaternion / translation, an unrelated
    frame, or a bad stamp."""
    t = bad_tf_static(pick, now_ns).transforms[0]
    if pick(4) == 0:
        _stamp(t, bad_stamp(pick, now_ns))
    return t


def bad_object_observation(pick, now_ns: int):
    from hp_ros_msgs.msg import ObjectObservation

    m = ObjectObservation(valid=True, confidence=0.9, centroid_u=320.0, centroid_v=240.0, median_depth=0.5)
    m.header.frame_id = FRAME
    _stamp(m, max(1, now_ns))
    case = pick(6)
    if case == 0:
        m.centroid_u = WEIRD[pick(3)]
    elif case == 1:
        m.confidence = math.nan
    elif case == 2:
        m.has_pose = True
        m.pose.orientation.w = 0.0
        m.pose_covariance = [WEIRD[pick(3)]] * 36
    elif case == 3:
        m.median_depth = math.inf
    elif case == 4:
        m.header.frame_id = "elsewhere"
    else:
        _stamp(m, bad_stamp(pick, now_ns))
    return m


def bad_fingertips(pick, now_ns: int):
    from hp_ros_msgs.msg import FingertipObservations

    m = FingertipObservations(names=["ah_link_04", "ah_link_14"], u=[1.0, 2.0], v=[1.0, 2.0], confidence=[1.0, 1.0])
    m.header.frame_id = FRAME
    _stamp(m, max(1, now_ns))
    case = pick(4)
    if case == 0:
        m.u = [1.0]
    elif case == 1:
        m.confidence = [math.nan, 1.0]
    elif case == 2:
        m.names = [f"tip_{pick(1000)}"] * 2
    else:
        _stamp(m, bad_stamp(pick, now_ns))
    return m


def bad_pose(pick, now_ns: int, covariance: bool = True):
    """PoseWithCovarianceStamped (refined_pose, object_pose) or PoseStamped (initial_pose)."""
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped

    m = PoseWithCovarianceStamped() if covariance else PoseStamped()
    m.header.frame_id = FRAME
    _stamp(m, max(1, now_ns))
    pose = m.pose.pose if covariance else m.pose
    pose.position.z = 0.5
    case = pick(4)
    if case == 0:
        pose.orientation.w = 0.0
    elif case == 1:
        pose.orientation.x = math.nan
        pose.orientation.w = 1.0
    elif case == 2:
        pose.orientation.w = 1.0
        pose.position.x = WEIRD[pick(3)]
    else:
        pose.orientation.w = 1.0
        if covariance:
            m.pose.covariance = [math.nan] * 36
        else:
            m.header.frame_id = "elsewhere"
    return m


def bad_refine_request(pick, now_ns: int):
    from hp_ros_msgs.srv import RefinePose

    r = RefinePose.Request()
    case = pick(4)
    if case == 0:
        r.use_initial_pose = True
        r.initial_pose = bad_pose(pick, now_ns, covariance=False)
    elif case == 1:
        r.max_iterations = 10 ** 9
    elif case == 2:
        r.terms = ["everything"]
    else:
        r.window_length = 10 ** 6
    return r


def mask(pick, now_ns: int):
    m = bad_image(pick, now_ns)
    if m.encoding == "rgb8":
        m.encoding = "mono8x"
    return m


# input topic -> (message builder); the graph's inputs from outside and between the nodes
INPUTS = {
    graph.CAMERA_TOPICS["color_image"]: lambda p, t: bad_image(p, t),
    graph.CAMERA_TOPICS["depth_image"]: lambda p, t: bad_image(p, t, depth=True),
    graph.CAMERA_TOPICS["color_info"]: bad_camera_info,
    graph.JOINT_STATES: bad_joint_state,
    "/tf_static": bad_tf_static,
    graph.TOPICS["object_observation"]: bad_object_observation,
    graph.TOPICS["fingertips"]: bad_fingertips,
    graph.TOPICS["hand_alignment"]: bad_hand_alignment,
    graph.TOPICS["object_mask"]: mask,
    graph.TOPICS["hand_mask"]: mask,
    graph.TOPICS["object_pose"]: lambda p, t: bad_pose(p, t),
    graph.TOPICS["refined_pose"]: lambda p, t: bad_pose(p, t),
    graph.TOPICS["initial_pose"]: lambda p, t: bad_pose(p, t, covariance=False),
}
