"""refinement_node over DDS: a client calls /hp_ros/refine_pose on the running node.

The test process plays the camera driver, the Allegro driver and the segmentation node: it
publishes camera_info, colour images, object/hand masks (ground truth of a synthetic sequence)
and joint states. Checks: bad requests give failure responses with a clear message (and the
node keeps running); a good request returns a pose close to ground truth with metrics, also
published on /hp_ros/refined_pose with a non-zero covariance; a window returns one pose per
frame; frames keep being buffered while a long refinement runs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hp_ros import graph
from hp_ros.core import metrics, se3
from hp_ros.core.objects import ObjectModel
from hp_ros.core.refine import perturb_pose
from hp_ros.io import msgs as M
from hp_ros.ros_process import python_module_cmd

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def seq():
    from hp_ros.core.synth import SynthConfig, generate_sequence

    return generate_sequence(SynthConfig(duration_s=1.0, fps=6, seed=1))


def _start_node(start_process, seq, *params: str):
    """The refinement node with the sequence's true camera->hand, 25 iterations, no coarse search,
    diagnostics every 0.2 s, and ``params`` (``name:=value``)."""
    xyz, quat = se3.pose_to_xyz_quat(torch.tensor(seq.T_cam_hand_true))
    c2h = [float(v) for v in list(xyz) + list(quat)]
    cmd = ["hp_ros.nodes.refinement_node", "--ros-args", "-r", "__ns:=/hp_ros", "-p", f"camera_to_hand:={c2h}",
           "-p", "max_iterations:=25", "-p", "num_hypotheses:=0", "-p", "diagnostics_period:=0.2"]
    for p in params:
        cmd += ["-p", p]
    return start_process(python_module_cmd(*cmd))


def _publishers(ros_node, *kinds: str, joints_depth: int = 100) -> dict:
    """Reliable publishers of the refinement node's inputs by kind (info, image, object_mask, hand_mask,
    depth, joints)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, JointState

    topics = {"info": (CameraInfo, graph.CAMERA_TOPICS["color_info"]), "image": (Image, graph.CAMERA_TOPICS["color_image"]),
              "object_mask": (Image, graph.TOPICS["object_mask"]), "hand_mask": (Image, graph.TOPICS["hand_mask"]),
              "depth": (Image, graph.CAMERA_TOPICS["depth_image"]), "joints": (JointState, graph.JOINT_STATES)}
    return {k: ros_node.create_publisher(topics[k][0], topics[k][1],
                                         QoSProfile(depth=joints_depth if k == "joints" else 10,
                                                    reliability=ReliabilityPolicy.RELIABLE)) for k in kinds}


def _call(node, client, req, timeout=120.0):
    from rostest_utils import spin_until

    fut = client.call_async(req)
    assert spin_until(node, fut.done, timeout), "service call timed out"
    return fut.result()


def test_refine_service(ros_node, start_process, seq):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
    from hp_ros_msgs.srv import RefinePose
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from rostest_utils import spin_until, wait_for_subscribers

    proc = _start_node(start_process, seq, "buffer_size:=6", "early_stop_patience:=0",
                       # a generous wait for the joint states to reach the frame (a burst of 100 reaches the
                       # node's reader in pieces on a loaded machine: 0.5 s left the good request without its hand)
                       "request_wait:=5.0",
                       # images subscribed all the time: this test publishes its frames once, before it asks
                       # (test_idle_node_receives_no_images: the default, subscribed around requests)
                       "image_linger:=-1.0")

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pubs = _publishers(ros_node, "info", "image", "object_mask", "hand_mask", "joints", joints_depth=500)
    refined, diags = [], []
    ros_node.create_subscription(PoseWithCovarianceStamped, graph.TOPICS["refined_pose"], refined.append, qos)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, qos)
    client = ros_node.create_client(RefinePose, graph.SERVICES["refine_pose"])
    assert spin_until(ros_node, client.service_is_ready, 30), proc.log_text()

    # --- empty buffer: clear failure, no exception
    res = _call(ros_node, client, RefinePose.Request())
    assert not res.success and ("camera_info" in res.message or "no synchronised frames" in res.message)

    for topic in (graph.CAMERA_TOPICS["color_image"], graph.CAMERA_TOPICS["color_info"], graph.TOPICS["object_mask"],
                  graph.TOPICS["hand_mask"], graph.JOINT_STATES):
        assert wait_for_subscribers(ros_node, topic, timeout=20)

    def publish_frame(k, stamp):
        pubs["info"].publish(M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, stamp_ns=stamp))
        pubs["image"].publish(M.numpy_to_image(seq.rgb[k], "rgb8", stamp, graph.CAMERA_FRAME, Image))
        pubs["object_mask"].publish(M.numpy_to_image(seq.object_mask[k].astype(np.uint8) * 255, "mono8", stamp,
                                                     graph.CAMERA_FRAME, Image))
        pubs["hand_mask"].publish(M.numpy_to_image(seq.hand_mask[k].astype(np.uint8) * 255, "mono8", stamp,
                                                   graph.CAMERA_FRAME, Image))

    def status():
        if not diags:
            return {}
        return {kv.key: kv.value for kv in diags[-1].status[0].values}

    pubs["info"].publish(M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, stamp_ns=int(seq.frame_stamps_ns[0])))
    spin_until(ros_node, lambda: False, 0.5)
    res = _call(ros_node, client, RefinePose.Request())
    assert not res.success and "no synchronised frames" in res.message

    def publish_joints():
        for j, t in enumerate(seq.joint_stamps_ns):
            pubs["joints"].publish(M.make_joint_state(seq.joint_names, seq.joint_positions[j], int(t), JointState))

    publish_joints()
    frames = [2, 3, 4, 5]
    stamps = [int(seq.frame_stamps_ns[k]) for k in frames]
    for k, s in zip(frames, stamps):
        publish_frame(k, s)
    # idle: the frames wait in the node's DDS readers; nothing is taken or decoded until asked
    assert spin_until(ros_node, lambda: "images_decoded" in status(), 10), status()
    assert status()["images_decoded"] == "0" and int(status()["messages_taken"]) <= 3, status()
    # a request takes them: a window longer than the buffer names the 4 buffered frames
    # (re-publishing the same stamps is idempotent: discovery may lose the first ones)
    for attempt in range(6):
        res = _call(ros_node, client, RefinePose.Request(window_length=5, use_initial_pose=False))
        if "4 buffered frames" in res.message:
            break
        publish_joints()
        for k, s in zip(frames, stamps):
            publish_frame(k, s)
        spin_until(ros_node, lambda: False, 1.0)
    assert not res.success and "4 buffered frames" in res.message, (res.message, status(), proc.log_text())
    assert spin_until(ros_node, lambda: status().get("buffered_frames") == "4", 10), status()
    assert status()["images_decoded"] == "0", status()

    k, stamp = 4, stamps[2]
    T_gt = torch.tensor(seq.T_cam_obj[k], dtype=torch.float32)
    T0 = perturb_pose(T_gt, 0.015, math.radians(10), torch.Generator().manual_seed(3)).double().numpy()

    def request(**kw):
        req = RefinePose.Request()
        req.stamp = M.ns_to_stamp(kw.pop("stamp", stamp), type(req.stamp))
        req.use_initial_pose = kw.pop("use_initial_pose", True)
        req.initial_pose = M.make_pose_stamped(T0, stamp, graph.CAMERA_FRAME, PoseStamped)
        for key, v in kw.items():
            setattr(req, key, v)
        return req

    # --- bad requests
    res = _call(ros_node, client, request(terms=["mask", "colour"]))
    assert not res.success and "unknown term" in res.message and "colour" in res.message
    res = _call(ros_node, client, request(window_length=5))
    assert not res.success and "window_length 5" in res.message
    # a stamp past the buffer's newest frame (a stamp inside its range gets the nearest frame, see
    # test_frame_for_stamp_finds_frames_inside_the_buffer)
    res = _call(ros_node, client, request(stamp=stamps[-1] + 123_000_000))
    assert not res.success and "no buffered frame" in res.message
    res = _call(ros_node, client, request(use_initial_pose=False))  # no depth published: no global estimate
    assert not res.success and "no initial pose" in res.message and "depth" in res.message
    bad = request()
    bad.initial_pose.pose.position.x = math.nan
    res = _call(ros_node, client, bad)
    assert not res.success and "NaN" in res.message
    assert proc.alive(), proc.log_text()

    # --- a good request
    res = _call(ros_node, client, request())
    assert res.success, res.message
    T = M.pose_to_matrix(res.pose)
    pts = ObjectModel.builtin("cracker_box").vertices.double().numpy()
    add0 = metrics.add(seq.T_cam_obj[k][None], T0[None], pts)[0] * 1000
    add1 = metrics.add(seq.T_cam_obj[k][None], T[None], pts)[0] * 1000
    assert add0 > 10.0 and add1 <= 5.0, (add0, add1)
    assert M.header_stamp_ns(res.pose) == stamp and res.pose.header.frame_id == graph.CAMERA_FRAME
    assert len(res.poses) == 1 and M.header_stamp_ns(res.poses[0]) == stamp
    assert res.mask_iou > 0.9 and res.iterations >= 1 and res.elapsed_s > 0
    assert res.final_loss < res.initial_loss
    assert "mask_object" in res.loss_terms and len(res.loss_terms) == len(res.loss_values)
    assert res.max_penetration_mm <= 2.0
    assert "hand not used" not in res.message, (res.message, proc.log_text())
    assert spin_until(ros_node, lambda: len(refined) >= 1, 10)
    # the request decoded its frame's colour image and masks (3), and only those
    assert spin_until(ros_node, lambda: status().get("images_decoded") == "3", 10), sorted(status().items())
    cov = np.array(refined[-1].pose.covariance).reshape(6, 6)
    assert np.all(np.diag(cov) > 0) and np.allclose(M.pose_to_matrix(refined[-1]), T, atol=1e-9)

    # --- a window of 3 frames ending at the stamp, starting from the last refined pose
    res = _call(ros_node, client, request(window_length=3, use_initial_pose=False, max_iterations=10))
    assert res.success, res.message
    assert [M.header_stamp_ns(p) for p in res.poses] == stamps[:3]

    # --- a frame published during a long refinement is buffered (in the reader) and refined next
    fut = client.call_async(request(max_iterations=250, use_initial_pose=True))
    assert spin_until(ros_node, lambda: status().get("busy") == "1", 60), status()
    new_stamp = stamps[-1] + 33_000_000
    publish_frame(5, new_stamp)
    finished_first = fut.done()
    assert spin_until(ros_node, fut.done, 180)
    assert not finished_first and fut.result().success
    res = _call(ros_node, client, request(stamp=new_stamp, max_iterations=5))
    assert res.success and M.header_stamp_ns(res.pose) == new_stamp, res.message
    assert proc.alive(), proc.log_text()


def test_frame_for_stamp_finds_frames_inside_the_buffer():
    """A request stamp equal to a buffered frame, between two (its own frame was never segmented),
    or outside the buffer (#17: a stamp inside the range was reported as missing)."""
    from hp_ros.nodes.refinement_node import frame_for_stamp

    period, tol = 33_333_333, 5_000_000
    stamps = [1_000_000_000 + k * period for k in (0, 1, 2, 4, 5)]  # frame 3 never got its mask
    assert frame_for_stamp(stamps, stamps[2], tol) == 2                       # equal
    assert frame_for_stamp(stamps, stamps[2] + 3_000_000, tol) == 2           # within sync_tolerance
    assert frame_for_stamp(stamps, 1_000_000_000 + 3 * period, tol) in (2, 3)  # missing frame: a neighbour
    assert frame_for_stamp(stamps, stamps[3] - 5_000_000, tol) == 3           # between two: the nearer
    assert frame_for_stamp(stamps, 0, tol) == 4                               # 0 = newest
    assert frame_for_stamp(stamps, stamps[0] - 20_000_000, tol) is None       # before the buffer
    assert frame_for_stamp(stamps, stamps[-1] + 20_000_000, tol) is None      # after it
    assert frame_for_stamp([], stamps[0], tol) is None


def test_idle_node_receives_no_images_and_subscribes_for_a_request(ros_node, start_process, seq):
    """The default: the image streams are subscribed to only around requests (issue 30). While
    idle no colour or mask reader exists (the graph shows no subscriber; nothing is taken or
    decoded although frames stream); a request opens them and refines the first frame that
    arrives (the requested one went by before), close to ground truth; after ``image_linger`` the
    node unsubscribes again."""
    from diagnostic_msgs.msg import DiagnosticArray
    from hp_ros_msgs.srv import RefinePose
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from rostest_utils import spin_until

    proc = _start_node(start_process, seq, "image_linger:=0.5", "use_depth:=false", "open_wait:=10.0",
                       "request_wait:=5.0")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pubs = _publishers(ros_node, "info", "image", "object_mask", "joints")
    diags = []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, qos)

    def status():
        for arr in reversed(diags):
            for st in arr.status:
                if "refinement_node" in st.name:
                    return {kv.key: kv.value for kv in st.values}
        return {}

    images = [graph.CAMERA_TOPICS["color_image"], graph.TOPICS["object_mask"]]
    readers = lambda: [ros_node.count_subscribers(t) for t in images]  # noqa: E731
    # a camera streaming at 6 Hz the whole time (the sequence looped, stamps increasing)
    period = int(seq.frame_stamps_ns[1] - seq.frame_stamps_ns[0])
    t0, sent = int(seq.frame_stamps_ns[0]), []

    def stream():
        n = len(sent)
        k, stamp = n % len(seq.frame_stamps_ns), t0 + n * period
        for j in range(len(seq.joint_stamps_ns)):  # the joint states around this frame
            dt = int(seq.joint_stamps_ns[j]) - int(seq.frame_stamps_ns[k])
            if abs(dt) <= period:
                pubs["joints"].publish(M.make_joint_state(seq.joint_names, seq.joint_positions[j], stamp + dt,
                                                          JointState))
        pubs["info"].publish(M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, stamp_ns=stamp))
        pubs["image"].publish(M.numpy_to_image(seq.rgb[k], "rgb8", stamp, graph.CAMERA_FRAME, Image))
        pubs["object_mask"].publish(M.numpy_to_image(seq.object_mask[k].astype(np.uint8) * 255, "mono8", stamp,
                                                     graph.CAMERA_FRAME, Image))
        sent.append((stamp, k))

    ros_node.create_timer(1.0 / 6, stream)
    # idle: after the start-up linger the node has no image reader, though frames stream
    assert spin_until(ros_node, lambda: status().get("images_subscribed") == "0" and readers() == [0, 0]
                      and len(sent) >= 12, 60), (status(), readers(), proc.log_text())
    n_idle = len(sent)
    assert spin_until(ros_node, lambda: len(sent) >= n_idle + 6 and status().get("images_decoded") == "0", 30)
    assert status()["images_decoded"] == "0" and readers() == [0, 0], status()
    taken = int(status()["messages_taken"])

    # a request for a frame that went by while nothing was subscribed: the first frame after
    asked, k_asked = sent[-1]
    client = ros_node.create_client(RefinePose, graph.SERVICES["refine_pose"])
    assert spin_until(ros_node, client.service_is_ready, 30)
    T0 = perturb_pose(torch.tensor(seq.T_cam_obj[k_asked], dtype=torch.float32), 0.01, math.radians(5),
                      torch.Generator().manual_seed(5)).double().numpy()
    req = RefinePose.Request(use_initial_pose=True)
    req.stamp = M.ns_to_stamp(asked, type(req.stamp))
    from geometry_msgs.msg import PoseStamped
    req.initial_pose = M.make_pose_stamped(T0, asked, graph.CAMERA_FRAME, PoseStamped)
    res = _call(ros_node, client, req)
    got = M.header_stamp_ns(res.pose)
    assert res.success and got > asked and "before the images were subscribed" in res.message, res.message
    k_got = dict(sent)[got]
    pts = ObjectModel.builtin("cracker_box").vertices.double().numpy()
    add = metrics.add(seq.T_cam_obj[k_got][None], M.pose_to_matrix(res.pose)[None], pts)[0]
    assert add < 0.01, (add, res.message)  # the refined pose is of the frame it names
    assert spin_until(ros_node, lambda: int(status().get("image_openings", 0)) >= 2
                      and int(status().get("messages_taken", 0)) > taken, 10), status()
    # ... and the node unsubscribes again once the linger has passed
    assert spin_until(ros_node, lambda: status().get("images_subscribed") == "0" and readers() == [0, 0], 30), \
        (status(), readers())


def test_the_image_subscriptions_close_when_their_linger_ends_not_with_the_diagnostics(ros_node, start_process,
                                                                                         seq):
    """The image readers are closed by their own check once ``image_linger`` has passed after the
    first camera_info, not by the /diagnostics timer (here once an hour: with it alone they stayed
    open up to a period longer, the segmentation publishing masks for them)."""
    from sensor_msgs.msg import CameraInfo

    from rostest_utils import spin_until

    _start_node(start_process, seq, "image_linger:=0.3", "diagnostics_period:=3600.0")
    pubs = _publishers(ros_node, "info")
    topics = [graph.CAMERA_TOPICS["color_image"], graph.TOPICS["object_mask"], graph.TOPICS["hand_mask"]]
    readers = lambda: [ros_node.count_subscribers(t) for t in topics]  # noqa: E731
    assert spin_until(ros_node, lambda: readers() == [1, 1, 1], 60), readers()  # open from start-up
    stamp = int(seq.frame_stamps_ns[0])
    ros_node.create_timer(0.1, lambda: pubs["info"].publish(M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo,
                                                                               stamp_ns=stamp)))
    assert spin_until(ros_node, lambda: readers() == [0, 0, 0], 60), readers()


def test_an_early_global_request_waits_for_the_first_frame_and_a_rejected_answer_fails(ros_node, start_process, seq):
    """Issue 26, the cold start at graph start-up. The tracker's first request (no initial pose: a
    global estimate) comes before the node has camera_info or a frame: it waits for the first frame
    with its depth (``first_frame_wait``) and is served then, not refused. A global estimate whose
    every answer fails the acceptance check (here ``global_min_iou`` above 1: none can pass) is a
    failure, ``rejected: ...``, with the best-fitting pose still in the response; it is not published
    on /hp_ros/refined_pose (the tracker would re-initialise from it)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from hp_ros_msgs.srv import RefinePose
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from rostest_utils import spin_until

    proc = _start_node(start_process, seq, "image_linger:=-1.0", "first_frame_wait:=300.0", "global_min_iou:=1.01",
                       "global_attempts:=1")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pubs = _publishers(ros_node, "info", "image", "object_mask", "hand_mask", "depth")
    refined, diags = [], []
    ros_node.create_subscription(PoseWithCovarianceStamped, graph.TOPICS["refined_pose"], refined.append, qos)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, qos)

    def status():
        return {kv.key: kv.value for kv in diags[-1].status[0].values} if diags else {}

    client = ros_node.create_client(RefinePose, graph.SERVICES["refine_pose"])
    assert spin_until(ros_node, client.service_is_ready, 60), proc.log_text()
    fut = client.call_async(RefinePose.Request())  # stamp 0, no initial pose: a global estimate
    # the request is taken and waits: nothing has been published yet
    assert spin_until(ros_node, lambda: status().get("busy") == "1" or fut.done(), 60), (status(), proc.log_text())
    assert not fut.done(), fut.result().message

    k = 3
    stamp = int(seq.frame_stamps_ns[k])
    for _ in range(300):  # the same frame again until answered (discovery may lose the first samples)
        pubs["info"].publish(M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, stamp_ns=stamp))
        pubs["image"].publish(M.numpy_to_image(seq.rgb[k], "rgb8", stamp, graph.CAMERA_FRAME, Image))
        for kind in ("object_mask", "hand_mask"):
            mask = getattr(seq, kind)[k].astype(np.uint8) * 255
            pubs[kind].publish(M.numpy_to_image(mask, "mono8", stamp, graph.CAMERA_FRAME, Image))
        pubs["depth"].publish(M.numpy_to_image(seq.depth_mm[k], "16UC1", stamp, graph.CAMERA_FRAME, Image))
        if spin_until(ros_node, fut.done, 1.0):
            break
    assert fut.done(), (status(), proc.log_text())
    res = fut.result()
    assert not res.success and res.message.startswith("rejected:"), res.message
    assert "mask IoU" in res.message and "1.01" in res.message and "global estimate" in res.message, res.message
    # the best-fitting pose is in the response, of the frame, with its metrics
    assert M.header_stamp_ns(res.pose) == stamp and res.iterations >= 1 and 0.0 < res.mask_iou <= 1.0, res
    pts = ObjectModel.builtin("cracker_box").vertices.double().numpy()
    adds = metrics.add_s(seq.T_cam_obj[k][None], M.pose_to_matrix(res.pose)[None], pts)[0]
    assert adds < 0.02, (adds, res.message)
    # counted as rejected, not as a success, and not published
    assert spin_until(ros_node, lambda: status().get("rejected") == "1", 30), status()
    assert status()["succeeded"] == "0" and not refined, (status(), len(refined))
    assert proc.alive(), proc.log_text()
