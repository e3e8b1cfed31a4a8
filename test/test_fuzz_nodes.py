"""Property-based fuzzing of every node's input callbacks, in process (issue 28).

Each node is first brought to a working state (camera_info, /tf_static, joint states and frames
at the stream's current stamp); then hypothesis draws malformed messages of every input
(``fuzz_messages``) and calls the node's own callback with each, as the executor would. The
callback itself must not raise (the guard is the last resort, not the plan), and the message must
change nothing the node keeps: intrinsics, calibration, buffered frames and joint states, the
tracker's frames, initial pose and resets. Refused messages are counted under a bounded set of
keys."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_messages as F
from hp_ros import graph
from hp_ros.io import msgs as M
from test_node_robustness import INFO, _make, context, give_joints, tf_static  # noqa: F401 - fixtures

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402

NOW = 1_700_000_100_000_000_000
MS = 1_000_000
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _warm(node, infos, joints, images=()):
    """Anchor the node's streams at NOW with valid messages."""
    for k in range(6):
        t = NOW - (5 - k) * 33 * MS
        info = M.make_camera_info(F.K, 640, 480, CameraInfo, stamp_ns=t, frame_id=F.FRAME)
        infos(info)
        for d in (-20, -10, 0):
            joints(M.make_joint_state(F.NAMES, np.zeros(16), t + d * MS, JointState))
        for img in images:
            img(M.numpy_to_image(np.zeros((480, 640, 3), np.uint8), "rgb8", t, F.FRAME, Image))


def _snapshot_joints(buf):
    return list(buf.stamps)


@pytest.fixture(scope="module")
def trk(context):  # noqa: F811
    from hp_ros.nodes.tracking_node import TrackingNode

    node = _make(TrackingNode, context)
    node.calib._on_tf_static(tf_static())
    node.p["pose_every_frame"] = False  # the frames dict then holds only observations' frames
    _warm(node, lambda m: node.on_camera_info(m, INFO), lambda m: give_joints(node, [m]))
    yield node
    node.destroy_node()


TRACKER_INPUTS = {
    graph.JOINT_STATES: lambda n, m: give_joints(n, [m]),
    graph.CAMERA_TOPICS["color_info"]: lambda n, m: n.on_camera_info(m, INFO),
    graph.TOPICS["object_observation"]: lambda n, m: n.on_observation("object", m),
    graph.TOPICS["fingertips"]: lambda n, m: n.on_observation("fingertips", m),
    graph.TOPICS["hand_alignment"]: lambda n, m: n.on_hand_alignment(m),
    "/tf_static": lambda n, m: n.calib._on_tf_static(m),
    graph.TOPICS["initial_pose"]: lambda n, m: n.on_initial_pose(m),
    graph.TOPICS["refined_pose"]: lambda n, m: n.on_refined_pose(m),
}


@FUZZ
@given(data=st.data(), topic=st.sampled_from(sorted(TRACKER_INPUTS)))
def test_tracker_inputs(trk, data, topic):
    msg = F.INPUTS[topic](F.hypothesis_pick(data.draw), NOW)
    t = trk.tracker
    before = (t.K, trk.calib.T_cam_hand.copy(), sorted(t.frames), t.pending_init, t.counts["resets"],
              _snapshot_joints(t.joints), dict(trk.checks.newest))
    fails = trk.guard.failures
    TRACKER_INPUTS[topic](trk, msg)
    after = (t.K, trk.calib.T_cam_hand, sorted(t.frames), t.pending_init, t.counts["resets"],
             _snapshot_joints(t.joints), dict(trk.checks.newest))
    assert before[0] is after[0] and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:], (topic, msg)
    assert trk.guard.failures == fails and len(trk.problems.counts) < 64


@pytest.fixture(scope="module")
def seg(context):  # noqa: F811
    from hp_ros.nodes.segmentation_node import SegmentationNode

    node = _make(SegmentationNode, context)
    node._running = False  # no worker: the test looks at what the callbacks store
    with node._cv:
        node._cv.notify_all()
    node._worker.join(5.0)
    node.cam_hand._on_tf_static(tf_static())

    def joints(m):
        with node._cv:
            node.on_joints(m)

    _warm(node, node.on_info, joints)
    yield node
    node.destroy_node()


def _seg_joints(n, m):
    with n._cv:
        n.on_joints(m)


SEG_INPUTS = {
    graph.CAMERA_TOPICS["color_image"]: lambda n, m: n.on_image(m, INFO),
    graph.CAMERA_TOPICS["depth_image"]: lambda n, m: n.on_depth(m),
    graph.CAMERA_TOPICS["color_info"]: lambda n, m: n.on_info(m),
    graph.JOINT_STATES: _seg_joints,
    "/tf_static": lambda n, m: n.cam_hand._on_tf_static(m),
    graph.TOPICS["object_pose"]: lambda n, m: n.on_prior(m),
}


@FUZZ
@given(data=st.data(), topic=st.sampled_from(sorted(SEG_INPUTS)))
def test_segmentation_inputs(seg, data, topic):
    msg = F.INPUTS[topic](F.hypothesis_pick(data.draw), NOW)
    with seg._cv:
        info = seg.new_info
    before = (len(seg.pending), len(seg.depth_queue), len(seg.priors), seg.cam_hand.T_cam_hand.copy(),
              _snapshot_joints(seg.joints))
    fails = seg.guard.failures
    SEG_INPUTS[topic](seg, msg)
    after = (len(seg.pending), len(seg.depth_queue), len(seg.priors), seg.cam_hand.T_cam_hand,
             _snapshot_joints(seg.joints))
    assert seg.new_info is info, "a malformed camera_info would reach the worker"
    assert before[:3] == after[:3] and np.array_equal(before[3], after[3]) and before[4] == after[4], (topic, msg)
    assert seg.guard.failures == fails and len(seg.problems.counts) < 64


@pytest.fixture(scope="module")
def ref(context):  # noqa: F811
    from hp_ros.nodes.refinement_node import RefinementNode

    node = _make(RefinementNode, context)
    node.cam_to_hand._on_tf_static(tf_static())

    def joints(m):
        with node.lock:
            node.on_joint_state(m)

    def image(m):
        with node.lock:
            node.on_buffered(m, "rgb")

    _warm(node, node.on_camera_info, joints, [image])
    yield node
    node.destroy_node()


def _ref_locked(method, *args):
    def call(n, m):
        with n.lock:
            getattr(n, method)(m, *args)
    return call


REF_INPUTS = {
    graph.CAMERA_TOPICS["color_image"]: _ref_locked("on_buffered", "rgb"),
    graph.TOPICS["object_mask"]: _ref_locked("on_buffered", "object_mask"),
    graph.TOPICS["hand_mask"]: _ref_locked("on_buffered", "hand_mask"),
    graph.CAMERA_TOPICS["color_info"]: lambda n, m: n.on_camera_info(m),
    graph.JOINT_STATES: _ref_locked("on_joint_state"),
    graph.TOPICS["object_pose"]: lambda n, m: n.on_object_pose(m),
    "/tf_static": lambda n, m: n.cam_to_hand._on_tf_static(m),
}


@FUZZ
@given(data=st.data(), topic=st.sampled_from(sorted(REF_INPUTS) + ["refine_pose"]))
def test_refinement_inputs(ref, data, topic):
    from hp_ros_msgs.srv import RefinePose

    pick = F.hypothesis_pick(data.draw)
    with ref.lock:
        before = (sorted(ref.frames), _snapshot_joints(ref.joints))
    cam, pose, T = ref.camera, ref.tracked_pose, ref.cam_to_hand.T_cam_hand.copy()
    fails = ref.guard.failures
    if topic == "refine_pose":
        res = ref.on_refine(F.bad_refine_request(pick, NOW), RefinePose.Response())
        assert not res.success and res.message
    else:
        REF_INPUTS[topic](ref, F.INPUTS[topic](pick, NOW))
    with ref.lock:
        after = (sorted(ref.frames), _snapshot_joints(ref.joints))
    assert before == after and ref.camera is cam and ref.tracked_pose is pose
    assert np.array_equal(T, ref.cam_to_hand.T_cam_hand)
    assert ref.guard.failures == fails and len(ref.problems.counts) < 64
