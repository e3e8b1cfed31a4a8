"""No message may kill a node or silently stop its work (issue 28): each finding of the issue
against the nodes' own callbacks, in process (a real rclpy context; callbacks called directly, as
the executor would), plus the callback guard and the supervised segmentation worker."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from hp_ros import graph
from hp_ros.io import msgs as M

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import TransformStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402

FRAME = graph.CAMERA_FRAME
NAMES = [f"ah_joint{f}{j}" for f in range(4) for j in range(4)]
T0 = 1_700_000_000_000_000_000
MS = 1_000_000
K_SMALL = np.array([[150.0, 0, 80], [0, 150.0, 60], [0, 0, 1]])
INFO = {"source_timestamp": 0, "received_timestamp": 0}


def tf_static(t=(0.0, 0.0, 0.5), q=(0.0, 0.0, 0.0, 1.0)):
    from tf2_msgs.msg import TFMessage

    m = M.make_transform_stamped(np.eye(4), T0, FRAME, "ah_palm_link", TransformStamped)
    tr, r = m.transform.translation, m.transform.rotation
    tr.x, tr.y, tr.z = t
    r.x, r.y, r.z, r.w = q
    return TFMessage(transforms=[m])


def info(stamp=T0, K=K_SMALL, w=160, h=120, frame=FRAME, **kw):
    m = M.make_camera_info(K, w, h, CameraInfo, stamp_ns=stamp, frame_id=frame)
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def joints(stamp, q=None):
    return M.make_joint_state(NAMES, np.zeros(16) if q is None else q, stamp, JointState)


def give_joints(trk, messages):
    """Joint states to the tracking node as its deferred reader would hand them over (one batch)."""
    trk.joint_reader.take = lambda: [(m, None) for m in messages]
    try:
        trk.run_tracker()
    finally:
        trk.joint_reader.take = lambda: []


def colour(stamp, encoding="rgb8", w=160, h=120):
    m = M.numpy_to_image(np.full((h, w, 3), 90, np.uint8), "rgb8", stamp, FRAME, Image)
    m.encoding = encoding
    return m


@pytest.fixture(scope="module")
def context():
    from hp_ros.ros_process import loopback_env, pick_domain_id
    import os

    env = loopback_env(domain_id=pick_domain_id())
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "-p", "segmentation_node:object_backend:=color",
                                  "-p", "segmentation_node:use_depth:=false",
                                  "-p", "tracking_node:request_refinement:=false"])
    yield ctx
    rclpy.shutdown(context=ctx)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _make(cls, context):
    import rclpy.node

    # the node classes take no context argument: make this module's the default for their __init__
    orig = rclpy.node.Node.__init__

    def init(self, name, **kw):
        kw.setdefault("context", context)
        orig(self, name, **kw)

    rclpy.node.Node.__init__ = init
    try:
        return cls()
    finally:
        rclpy.node.Node.__init__ = orig


@pytest.fixture(scope="module")
def seg(context):
    from hp_ros.nodes.segmentation_node import SegmentationNode

    node = _make(SegmentationNode, context)
    yield node
    node.destroy_node()


@pytest.fixture(scope="module")
def trk(context):
    from hp_ros.nodes.tracking_node import TrackingNode

    node = _make(TrackingNode, context)
    yield node
    node.destroy_node()


@pytest.fixture(scope="module")
def ref(context):
    from hp_ros.nodes.refinement_node import RefinementNode

    node = _make(RefinementNode, context)
    yield node
    node.destroy_node()


# --- findings 1 and 2: /tf_static ---------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(q=(0, 0, 0, 0)), dict(q=(math.nan, 0, 0, 1)), dict(t=(math.nan, 0, 0.5))],
                         ids=["zero_quaternion", "nan_quaternion", "nan_translation"])
def test_findings_1_2_bad_tf_static_is_refused_and_changes_nothing(seg, trk, ref, bad):
    for node, c2h in ((seg, seg.cam_hand), (trk, trk.calib), (ref, ref.cam_to_hand)):
        c2h._on_tf_static(tf_static())
        before = c2h.T_cam_hand.copy()
        n = node.problems.total()
        c2h._on_tf_static(tf_static(**bad))  # raised (finding 1) or stored NaN (finding 2) before
        assert np.all(np.isfinite(c2h.T_cam_hand)) and np.array_equal(c2h.T_cam_hand, before)
        assert node.problems.total() == n + 1


# --- findings 3, 4 and 9: camera_info ------------------------------------------------------------

BAD_INFOS = {
    "nan_k": lambda: info(k=np.array([math.nan, 0, 80, 0, 150, 60, 0, 0, 1.0])),
    "inf_fx": lambda: info(k=np.array([math.inf, 0, 80, 0, 150, 60, 0, 0, 1.0])),
    "huge": lambda: info(w=100000, h=100000),
    "unknown_distortion": lambda: info(distortion_model="kannala_brandt_9000"),
    "nan_d": lambda: info(d=np.array([0.0, math.nan, 0, 0, 0])),
    "unknown_frame": lambda: info(frame="not_the_camera"),
}


@pytest.mark.parametrize("kind", list(BAD_INFOS))
def test_findings_3_4_9_bad_camera_info_is_refused_by_every_node(seg, trk, ref, kind):
    msg = BAD_INFOS[kind]()
    with seg._cv:
        seg.new_info = None
    seg.on_info(msg)
    assert seg.new_info is None, "the segmentation worker would take it"
    K_before = trk.tracker.K
    trk.on_camera_info(msg, INFO)
    assert trk.tracker.K is K_before
    cam_before = ref.camera
    ref.on_camera_info(msg)
    assert ref.camera is cam_before
    assert seg._worker.is_alive()


def test_finding9_camera_info_stamps_far_future_or_backwards_pose_no_extra_frame(trk):
    trk.on_camera_info(info(stamp=T0 + 100 * 33 * MS), INFO)
    trk.tracker.frames.clear()
    n = trk.problems.total()
    for s in (T0 + 100 * 33 * MS + 3600 * 10 ** 9, T0 + 100 * 33 * MS - 10 * MS, T0 + 100 * 33 * MS):
        trk.on_camera_info(info(stamp=s), INFO)  # far future, backwards, repeated
    assert not trk.tracker.frames, "an extra frame would be posed"
    assert trk.problems.total() == n + 3


def test_finding9_late_joint_states_are_counted(trk):
    now = T0 + 100 * 33 * MS  # the camera_info stream's time (test above)
    give_joints(trk, [joints(now), joints(now - 200 * MS)])  # 0.2 s late: dropped, and now counted
    assert trk.problems.counts.get("joint_states_late", 0) >= 1


# --- finding 5: stray stamps do not reset; a reset does not re-arm a stale initial pose ---------

@pytest.fixture
def fresh_tracker(context):
    """A tracker fed 2 s of a synthetic sequence (joint states + camera_info), initialised from the
    initial_pose parameter at the first frame, every frame posed."""
    from scipy.spatial.transform import Rotation

    from hp_ros.core.synth import SynthConfig, generate_sequence
    from hp_ros.nodes.tracking_node import TrackingNode

    seq = generate_sequence(SynthConfig(duration_s=3.0, seed=2, render=False))
    T_0, Tc = seq.T_cam_obj[0], seq.T_cam_hand_published
    node = _make(TrackingNode, context)
    node.tracker.cfg.pairing_timeout = 0.0
    node.tracker.initial_pose = T_0.copy()
    node.tracker.pending_init = (T_0.copy(), None, None)
    node.calib._value = Tc
    yield node, seq
    node.destroy_node()


def feed(node, seq, t_from, t_to, shift=0, bad=None):
    """Joint states and camera_info of ``seq`` between the stamps, in time order (``shift`` ns added
    to every stamp); ``bad(i)``: extra messages to send after the i-th."""
    items = [(int(s), "j", q) for s, q in zip(seq.joint_stamps_ns, seq.joint_positions)]
    items += [(int(s), "c", None) for s in seq.frame_stamps_ns]
    i = 0
    for s, kind, q in sorted(items, key=lambda x: x[0]):
        if not t_from <= s < t_to:
            continue
        if kind == "j":
            give_joints(node, [M.make_joint_state(seq.joint_names, q, s + shift, JointState)])
        else:
            node.on_camera_info(M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, stamp_ns=s + shift,
                                                   frame_id=FRAME), INFO)
        for m in (bad(i) if bad else []):
            if isinstance(m, JointState):
                give_joints(node, [m])
            else:
                node.on_camera_info(m, INFO)
        i += 1
    node.run_tracker()


def test_finding5_stray_stamps_never_reset_the_tracker(fresh_tracker):
    node, seq = fresh_tracker
    s0, s_end = int(seq.frame_stamps_ns[0]), int(seq.joint_stamps_ns[-1])
    q = seq.joint_positions[0]

    def bad(i):
        now = s0 + i * 7 * MS
        return [JointState(), joints(0, q), joints(now - 2 * 10 ** 9, q), joints(now + 60 * 10 ** 9, q),
                joints(now - 10 ** 9, q), info(stamp=now - 2 * 10 ** 9, K=seq.K, w=seq.width, h=seq.height)][i % 6:i % 6 + 1]

    feed(node, seq, s0, s_end, bad=bad)
    counts = node.tracker.counts
    assert counts["resets"] == 0, counts
    assert node.tracker.ekf is not None and node.tracker.ekf.initialized and counts["frames"] >= len(seq.frame_stamps_ns) - 2, counts


def test_finding5_reset_mid_stream_does_not_rearm_the_stale_initial_pose(fresh_tracker):
    node, seq = fresh_tracker
    s0 = int(seq.frame_stamps_ns[0])
    feed(node, seq, s0, s0 + 2 * 10 ** 9)
    assert node.tracker.ekf is not None and node.tracker.ekf.initialized and node.tracker.counts["resets"] == 0
    # a restarted driver: the timeline continues 1.2 s back, at the stream's second 1 - not its start
    feed(node, seq, s0 + 2 * 10 ** 9, s0 + 2500 * MS, shift=-1200 * MS)
    assert node.tracker.counts["resets"] == 1, node.tracker.counts
    assert node.tracker.pending_init is None and not (node.tracker.ekf is not None and node.tracker.ekf.initialized), "the stale initial pose was re-armed"
    assert node.checks.jump_seed is not None  # it asks the refinement, seeded with its last estimate


def test_finding5_bag_loop_resets_and_rearms_the_initial_pose(fresh_tracker):
    node, seq = fresh_tracker
    s0 = int(seq.frame_stamps_ns[0])
    feed(node, seq, s0, s0 + 2 * 10 ** 9)
    feed(node, seq, s0, s0 + 1 * 10 ** 9)  # the bag loops: back to its start on every topic
    assert node.tracker.counts["resets"] == 1, node.tracker.counts
    assert node.tracker.ekf is not None and node.tracker.ekf.initialized, "re-initialised from the initial pose at the start of the stream"


# --- finding 6: refinement buffer ------------------------------------------------------------

def test_finding6_far_future_images_do_not_fill_the_refinement_buffer(ref):
    mask = M.numpy_to_image(np.full((120, 160), 255, np.uint8), "mono8", T0, FRAME, Image)
    with ref.lock:
        ref.frames.clear()

    def good(k):
        s = T0 + k * 33 * MS
        ref.on_buffered(colour(s), "rgb")
        mask.header.stamp = M.ns_to_stamp(s, type(mask.header.stamp))
        ref.on_buffered(mask, "object_mask")

    for k in range(5):
        good(k)
    for k in range(40):  # a burst stamped an hour ahead
        ref.on_buffered(colour(T0 + 3600 * 10 ** 9 + k * MS), "rgb")
    for k in range(5, 10):
        good(k)
    usable = ref.usable_stamps()
    with ref.lock:
        newest = max(ref.frames)
    assert len(usable) == 10 and newest < T0 + 10 ** 9, usable


def test_finding6_refinement_buffer_evicts_by_age(ref):
    with ref.lock:
        ref.frames.clear()
    for k in range(10):
        ref.on_buffered(colour(T0 + k * 300 * MS), "rgb")  # 10 frames over 2.7 s
    with ref.lock:
        stamps = list(ref.frames)
    assert stamps[0] >= stamps[-1] - int(ref.p["max_frame_age"] * 1e9)


# --- finding 8: bounded keys and memory ------------------------------------------------------

def test_finding8_endless_encodings_and_joint_names_make_no_new_keys(seg):
    for k in range(300):
        seg.on_image(colour(T0 + k * MS, encoding=f"enc{k}"), INFO)
        with seg._cv:
            seg.on_joints(M.make_joint_state([f"bogus_{k}"], np.zeros(1), T0 + k * MS, JointState))
    keys = [k for k in seg.problem_values() if "enc2" in k or "bogus" in k]
    assert len(seg.problems.counts) < 64 and not keys, keys
    assert seg.problems.counts["colour_encoding"] >= 300 and seg.problems.last_values["colour_encoding"] == "enc299"
    assert len(seg.mapper._cache) < 64


# --- the callback guard -----------------------------------------------------------------------

def test_guard_keeps_callbacks_of_every_kind_from_raising(seg):
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    def boom(*args):
        raise RuntimeError("injected")

    sub = seg.create_subscription(String, "/hp_ros_test_guard", boom, 10)
    srv = seg.create_service(Trigger, "/hp_ros_test_guard_srv", boom)
    tmr = seg.create_timer(1000.0, boom)
    n = seg.guard.failures
    sub.callback(String(data="x"))
    res = srv.callback(Trigger.Request(), Trigger.Response())
    tmr.callback()
    assert seg.guard.failures == n + 3 and not res.success and "injected" in res.message
    assert any(k.startswith("input_errors.callback_errors.") for k in seg.problem_values())
    for e in (sub, srv, tmr):
        (seg.destroy_subscription if e is sub else seg.destroy_service if e is srv else seg.destroy_timer)(e)


def test_publishers_add_no_waitables_subscriptions_keep_their_qos_events(seg):
    """Every executor wake rebuilds its wait set from the node's waitables: our publishers bring none
    (rclpy's default incompatible-QoS / -type handlers would be two each), while a subscription keeps
    the handlers that report a driver's mismatching QoS."""
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    def waitables():
        return len(list(seg.waitables))

    n = waitables()
    pub = seg.create_publisher(String, "/hp_ros_test_events_pub", 10)
    assert waitables() == n
    sub = seg.create_subscription(String, "/hp_ros_test_events_sub", lambda m: None, 10)
    assert waitables() > n
    # and the publisher still works: a message reaches a subscription through the executor
    got = []
    sub2 = seg.create_subscription(String, "/hp_ros_test_events_pub", got.append, 10)
    ex = SingleThreadedExecutor(context=seg.context)
    ex.add_node(seg)
    try:
        deadline = time.monotonic() + 30.0
        while not got and time.monotonic() < deadline:
            pub.publish(String(data="x"))
            ex.spin_once(timeout_sec=0.05)
    finally:
        ex.remove_node(seg)
        ex.shutdown()
    assert got and got[0].data == "x"
    seg.destroy_publisher(pub)
    seg.destroy_subscription(sub)
    seg.destroy_subscription(sub2)


# --- supervised worker ------------------------------------------------------------------------

def test_segmentation_worker_is_restarted_and_frames_flow_again(seg):
    from diagnostic_msgs.msg import DiagnosticStatus

    seg.cam_hand._on_tf_static(tf_static())
    stamp = [T0 + 50 * 10 ** 9]

    def send_frames(n):
        for _ in range(n):
            stamp[0] += 33 * MS
            seg.on_info(info(stamp=stamp[0]))
            with seg._cv:  # as the worker's joint-state intake calls it
                for d in (-20, -10, 0, 10, 20):
                    seg.on_joints(joints(stamp[0] + d * MS))
            seg.on_image(colour(stamp[0]), INFO)
            time.sleep(0.05)

    def wait(cond, timeout=30.0):
        t = time.monotonic()
        while not cond() and time.monotonic() - t < timeout:
            send_frames(1)
        return cond()

    assert wait(lambda: seg.frames >= 2), "no frame segmented"
    real = seg._next_ready

    def fail_once():
        seg._next_ready = real
        raise RuntimeError("injected worker fault")

    seg._next_ready = fail_once
    restarts = seg._worker.restarts
    assert wait(lambda: seg._worker.restarts > restarts), "the worker was not restarted"
    n = seg.frames
    assert wait(lambda: seg.frames >= n + 3), "frames did not flow again"
    sent = []
    seg.diag_pub.publish = sent.append
    seg.publish_diagnostics()
    st = sent[-1].status[0]
    assert st.level == DiagnosticStatus.ERROR and "restarted" in st.message, st


# --- finding 7: the service under load ------------------------------------------------------

def test_finding7_every_concurrent_refine_pose_request_is_answered(context, ref):
    """20 requests at once while each refinement takes 0.3 s: every one is answered - refined
    (here: a failure after 0.3 s, the refinement is stubbed) or refused at once with "busy" and a
    retry hint. Twice: while the node's executor runs, and as a burst that arrives while its
    executor is held (a node busy elsewhere): the service's request queue (SERVICE_QUEUE_DEPTH)
    must keep all 20 until it takes them. With the rmw default queue of 10 the held burst loses 10
    (shown on the old QoS: 10 of 20 answered); with one request at a time and that queue, 9 of 20
    were never answered (finding 7)."""
    import threading

    from hp_ros_msgs.srv import RefinePose
    from rclpy.executors import SingleThreadedExecutor

    from hp_ros.nodes.executor import PoolExecutor
    from hp_ros.nodes.refinement_node import REFINEMENT_THREADS, SERVICE_QOS

    def slow_serve(request, response):
        time.sleep(0.3)
        response.success, response.message = False, "stub: no frames"
        return response

    ref._serve = slow_serve
    ex = PoolExecutor(num_threads=REFINEMENT_THREADS, context=context)
    ex.add_node(ref)
    stop, hold = threading.Event(), threading.Event()

    def spin():
        while not stop.is_set():
            if hold.is_set():
                time.sleep(0.01)
            else:
                ex.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    client_node = rclpy.create_node("hp_ros_test_refine_client", context=context)
    cex = SingleThreadedExecutor(context=context)
    cex.add_node(client_node)
    try:
        # the client's response queue as deep as the service's (README: a client sending bursts)
        client = client_node.create_client(RefinePose, graph.SERVICES["refine_pose"], qos_profile=SERVICE_QOS)
        assert client.wait_for_service(timeout_sec=20.0)

        def ask_20():
            futures = [client.call_async(RefinePose.Request()) for _ in range(20)]
            return futures

        def answers(futures):
            t = time.monotonic()
            while not all(f.done() for f in futures) and time.monotonic() - t < 60.0:
                cex.spin_once(timeout_sec=0.05)
            return [f.result() for f in futures if f.done()]

        answered = answers(ask_20())
        assert len(answered) == 20, f"{20 - len(answered)} of 20 requests never answered"
        busy = [r for r in answered if r.message.startswith("busy")]
        assert busy and all("retry in about" in r.message and not r.success for r in busy)
        assert len(answered) - len(busy) >= 1  # at least one was actually served
        time.sleep(0.5)  # the last one served
        # a burst that arrives while the executor takes nothing: 1 s for the 20 to reach the
        # node's reader (delivered sooner or not, the queue must not drop any of them)
        hold.set()
        time.sleep(0.2)  # the spinner's current spin_once returns
        futures = ask_20()
        time.sleep(1.0)
        hold.clear()
        answered = answers(futures)
        assert len(answered) == 20, f"{20 - len(answered)} of 20 requests of a held burst never answered"
    finally:
        stop.set()
        spinner.join(5.0)
        ex.remove_node(ref)
        cex.remove_node(client_node)
        client_node.destroy_node()
        del ref._serve
