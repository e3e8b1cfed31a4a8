"""Ctrl-C / SIGTERM shutdown of the hp_ros nodes (issue #18).

A terminal's Ctrl-C under ``ros2 launch`` sends SIGINT to the whole process group and launch
forwards another one, so every node gets SIGINT twice; ``launch`` escalates to SIGTERM. Each node
must then exit with code 0 and without a traceback, whether the second signal arrives while it
spins, while it cleans up (``destroy_node``) or while a long refinement request runs on an
executor thread - and a running refinement must not keep the process alive.

The nodes run as separate processes with the exact command lines of the launch file / demo
(``hp_ros.graph.process_commands``). "Spinning" = the node's first /diagnostics message, which
its executor publishes from a timer. Node starts: 3 (the graph) + 2 (refinement requests).
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

from hp_ros import graph
from hp_ros.io import msgs as M

pytestmark = pytest.mark.ros

NODES = ("segmentation_node", "tracking_node", "refinement_node")
EXIT_TIMEOUT = 10.0  # s from the first signal to the exit (launch escalates to SIGTERM after 5 s)


def _command(name: str, *params: str) -> list:
    if name == "graph_process":
        cmd = dict(graph.process_commands({"single_process": "true"}, python=sys.executable))[name]
    else:
        cmd = dict(graph.process_commands(python=sys.executable))[name]  # the default: one per node
    for p in params:
        cmd += ["-p", p]
    return cmd


class Diagnostics:
    """/diagnostics of the node(s) under test, newest status values per node name."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.latest: dict = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))

    def _on(self, msg):
        for st in msg.status:
            for name in NODES:
                if name in st.name:
                    self.latest[name] = {kv.key: kv.value for kv in st.values}

    def values(self, name: str) -> dict:
        return self.latest.get(name, {})


def _wait_spinning(probe, diags, procs: dict, timeout: float = 150.0) -> None:
    """Until every node in ``procs`` (name -> NodeProcess) published /diagnostics (its executor runs)."""
    from rostest_utils import spin_until

    def up():
        for p in procs.values():
            assert p.alive(), f"{p.name} exited during start-up:\n{p.log_text()[-3000:]}"
        return all(n in diags.latest for n in procs)

    assert spin_until(probe, up, timeout), "not spinning: " + ", ".join(
        f"{n}\n{p.log_text()[-2000:]}" for n, p in procs.items() if n not in diags.latest)


def _signal(procs, sigs) -> float:
    """Send ``sigs`` (50 ms apart) to the process group of every process (as a terminal's Ctrl-C
    does, then launch); the time of the first signal."""
    t0 = time.monotonic()
    for i, sig in enumerate(sigs):
        if i:
            time.sleep(0.05)
        for p in procs:
            try:
                os.killpg(p.proc.pid, sig)
            except ProcessLookupError:  # already gone: its exit code tells
                pass
    return t0


def _assert_clean_exit(procs, t0: float, timeout: float = EXIT_TIMEOUT) -> None:
    problems = []
    for p in procs:
        try:
            p.proc.wait(max(0.1, t0 + timeout - time.monotonic()))
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            problems.append(f"{p.name} still running {timeout:.0f} s after the first signal")
            continue
        log = p.log_text()
        if p.proc.returncode != 0:
            problems.append(f"{p.name} exit code {p.proc.returncode}")
        if "Traceback" in log or "KeyboardInterrupt" in log:
            problems.append(f"{p.name} printed a traceback")
    logs = "\n".join(f"----- {p.name} -----\n{p.log_text()[-3000:]}" for p in procs)
    assert not problems, "; ".join(problems) + "\n" + logs


def test_graph_exits_cleanly_on_two_sigints(ros_node, start_process):
    """The three nodes as ros2 launch starts them; Ctrl-C (SIGINT to each) then launch's SIGINT."""
    # the demo's extra parameters (marker colours, an initial pose) only matter once data flows
    procs = {name: start_process(_command(name), name=name) for name in NODES}
    diags = Diagnostics(ros_node)
    _wait_spinning(ros_node, diags, procs)
    t0 = _signal(procs.values(), (signal.SIGINT, signal.SIGINT))
    _assert_clean_exit(procs.values(), t0)


@pytest.mark.parametrize("sigs", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)], ids=["sigint-twice", "sigterm"])
def test_single_graph_process_exits_cleanly(ros_node, start_process, sigs):
    """The default launch: the three nodes in one process, each spinning on its own thread."""
    proc = start_process(_command("graph_process"), name="graph_process")
    diags = Diagnostics(ros_node)
    _wait_spinning(ros_node, diags, {name: proc for name in NODES})  # all three nodes report
    t0 = _signal([proc], sigs)
    _assert_clean_exit([proc], t0)


@pytest.fixture(scope="module")
def frame():
    """One synthetic frame: (camera K, width, height, rgb, object mask, T_cam_obj, stamp_ns)."""
    from hp_ros.core.synth import SynthConfig, generate_sequence

    seq = generate_sequence(SynthConfig(duration_s=0.2, fps=5, seed=1))
    return seq.K, seq.width, seq.height, seq.rgb[0], seq.object_mask[0], seq.T_cam_obj[0], int(seq.frame_stamps_ns[0])


@pytest.mark.parametrize("sigs", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)], ids=["sigint-twice", "sigterm"])
def test_refinement_node_exits_during_a_request(ros_node, start_process, frame, sigs):
    """A 2000-iteration refinement runs on an executor thread when the signal(s) arrive."""
    from geometry_msgs.msg import PoseStamped
    from hp_ros_msgs.srv import RefinePose
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from hp_ros.core.refine import perturb_pose
    from rostest_utils import spin_until, wait_for_subscribers

    proc = start_process(_command("refinement_node", "diagnostics_period:=0.2", "num_hypotheses:=0",
                                  "early_stop_patience:=0", "image_linger:=-1.0"), name="refinement_node")
    K, width, height, rgb, mask, T_gt, stamp = frame
    diags = Diagnostics(ros_node)
    _wait_spinning(ros_node, diags, {"refinement_node": proc})

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    info_pub = ros_node.create_publisher(CameraInfo, graph.CAMERA_TOPICS["color_info"], qos)
    image_pub = ros_node.create_publisher(Image, graph.CAMERA_TOPICS["color_image"], qos)
    mask_pub = ros_node.create_publisher(Image, graph.TOPICS["object_mask"], qos)
    for topic in (graph.CAMERA_TOPICS["color_info"], graph.CAMERA_TOPICS["color_image"], graph.TOPICS["object_mask"]):
        assert wait_for_subscribers(ros_node, topic, timeout=20), topic
    status = lambda: diags.values("refinement_node")  # noqa: E731
    client = ros_node.create_client(RefinePose, graph.SERVICES["refine_pose"])
    assert spin_until(ros_node, client.service_is_ready, 30), proc.log_text()
    # the frame waits in the node's readers until a request takes it: a window of 2 frames names
    # the 1 buffered frame once it is there
    probe = RefinePose.Request(window_length=2, use_initial_pose=False)
    message = ""
    # the same stamp again is idempotent: discovery may lose the first samples (and the previous
    # test's node can still count as a subscriber while this one's readers are not matched yet)
    for _ in range(20):
        info_pub.publish(M.make_camera_info(K, width, height, CameraInfo, stamp_ns=stamp))
        image_pub.publish(M.numpy_to_image(rgb, "rgb8", stamp, graph.CAMERA_FRAME, Image))
        mask_pub.publish(M.numpy_to_image(mask.astype(np.uint8) * 255, "mono8", stamp, graph.CAMERA_FRAME, Image))
        spin_until(ros_node, lambda: False, 0.5)
        fut = client.call_async(probe)
        assert spin_until(ros_node, fut.done, 30), proc.log_text()
        message = fut.result().message
        if "1 buffered frames" in message:
            break
        spin_until(ros_node, lambda: False, 1.0)
    assert "1 buffered frames" in message, (message, proc.log_text())

    T0 = perturb_pose(torch.tensor(T_gt, dtype=torch.float32), 0.015, math.radians(10),
                      torch.Generator().manual_seed(3)).double().numpy()
    req = RefinePose.Request()
    req.stamp = M.ns_to_stamp(stamp, type(req.stamp))
    req.use_initial_pose = True
    req.initial_pose = M.make_pose_stamped(T0, stamp, graph.CAMERA_FRAME, PoseStamped)
    req.max_iterations = 2000  # the node's limit: tens of seconds, far longer than the exit may take
    fut = client.call_async(req)
    assert spin_until(ros_node, lambda: status().get("busy") == "1" or fut.done(), 60), (status(), proc.log_text())
    # past the node's wait for joint states (request_wait 0.5 s; none are sent): in the optimisation
    spin_until(ros_node, lambda: fut.done(), 1.0)
    assert status().get("busy") == "1" and not fut.done(), (status(), fut.done() and fut.result().message)

    t0 = _signal([proc], sigs)
    _assert_clean_exit([proc], t0)
