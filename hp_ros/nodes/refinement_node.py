"""refinement_node: optimisation-based refinement (hp_ros.core.refine) as a ROS 2 service.

In: colour image + camera_info, /hp_ros/object_mask and /hp_ros/hand_mask (mono8, the image's
stamp), aligned depth (optional, ``use_depth``), /joint_states, /tf_static or the
``camera_to_hand`` parameter, /hp_ros/object_pose (the tracker's estimate, used as the default
initial pose).
Out: service /hp_ros/refine_pose (hp_ros_msgs/srv/RefinePose), /hp_ros/refined_pose
(PoseWithCovarianceStamped), /diagnostics (buffer state, once per second).

Frames: the inputs wait in their DDS readers (keep-last, ``buffer_size`` frames; no Python runs
per message, :mod:`hp_ros.nodes.deferred`); a request takes them and matches images and masks by
header stamp (within ``sync_tolerance``) into a ring buffer of ``buffer_size`` frames; a frame is
usable once its image and object mask are there. Only the refined frames' images are decoded.
The image streams (colour, depth, masks: ~2 MB per frame) are subscribed to only from start-up
(until ``image_linger`` seconds after the first camera_info) and from each request until
``image_linger`` seconds after its answer: an idle node receives no images
(receiving them cost ~1.5 ms of CPU per frame in Fast DDS alone), and the segmentation node
publishes its masks only while someone subscribes. A request that finds them closed opens them
and refines the first frames that arrive (its answer names that frame: the tracker re-predicts
from it). /diagnostics reports the buffer as the last request left it (``buffered_frames``),
whether the images are subscribed, the messages taken and the images decoded.
Joint states are interpolated to the frame stamp when a request is served.

Loss terms and weights come from the priors registry (:mod:`hp_ros.core.priors`): ``default_terms``
and a request's ``terms`` take its term names, and each registered term has a ``weights.<name>``
parameter with the registry's default; the refinement settings' defaults are the core's
(``RefineConfig``, ``global_pose``). The parameters: :mod:`hp_ros.nodes.refinement_params`.

Covariance of /hp_ros/refined_pose: a fixed diagonal ``refined_pose_sigma`` (x, y, z in m,
rotations in rad, parameter) divided by the final object mask IoU squared (clamped to >= 0.1):
a refinement that explains the observed mask well gets the nominal uncertainty, a poor fit a
larger one. Never zeros.

Threading: subscriptions and the diagnostics timer run in one mutually exclusive callback group
(in order), the service in a reentrant one, on a thread pool (``nodes.executor.PoolExecutor``), so a long
refinement does not stall buffering (torch releases the GIL in its kernels). Requests are served
one at a time: one that arrives while another is being refined is answered at once with
``success = False`` and a message starting ``busy:`` with a retry hint, so every request gets an
answer. The service's request queue (QoS depth ``SERVICE_QUEUE_DEPTH``, keep-last, reliable) holds
requests that arrive in one burst before the executor takes them; busy answers take microseconds,
so it only has to absorb a burst.

Answers that are not a pose to use: a request that finds no camera_info or no synchronised frame
(the cold start's first, at graph start-up) waits up to ``first_frame_wait`` for the first frame and
is served then; after that it is answered ``success = False``, ``not ready: ...`` (logged at INFO,
throttled). A global estimate whose every search's answer failed the acceptance check
(:class:`hp_ros.core.global_pose.AnswerCheck`: ``global_min_iou``, ``global_max_penetration_mm``) is
answered ``success = False``, ``rejected: best mask IoU 0.870 < 0.94 after 3 global search(es) ...``,
with the best-fitting pose and its metrics still in the response; it is not published on
/hp_ros/refined_pose and not kept as the next request's start.
"""
from __future__ import annotations

from hp_ros.nodes import exit_quietly_while_loading

exit_quietly_while_loading(__name__)  # before the imports below: they take seconds

import math
import threading
import time
from collections import OrderedDict, deque
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from hp_ros_msgs.srv import RefinePose
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState

from hp_ros import graph
from hp_ros.core.device import resolve_device
from hp_ros.core import priors
from hp_ros.core.global_pose import AnswerCheck
from hp_ros.core.refine import RefineConfig
from hp_ros.io import msgs, validate
from hp_ros.nodes.deferred import DeferredReader
from hp_ros.nodes.buffers import JointStateBuffer
from hp_ros.nodes.calibration import CameraToHand
from hp_ros.nodes.diagnostics import diagnostics_message
from hp_ros.nodes.guard import GuardedNode
from hp_ros.nodes.executor import PoolExecutor
from hp_ros.nodes.loaders import camera_to_hand_from_param, load_hand, load_object
from hp_ros.nodes.local_bus import publisher
from hp_ros.nodes.params import COMMON_PARAMS, declare_parameters, stamp_detector
from hp_ros.nodes.process import run_node
from hp_ros.nodes.qos import OUTPUT_QOS
from hp_ros.nodes.refinement_params import OWN_PARAMS, own_params, weights_from_params  # noqa: F401 (OWN_PARAMS: README)

MAX_ITERATIONS_LIMIT = 2000
# how a failure answer's message starts when the node has no camera_info or frame yet (the client asks
# again, quietly), and when every global search's answer failed the acceptance check (AnswerCheck)
NOT_READY, REJECTED = graph.REFINE_NOT_READY, graph.REFINE_REJECTED


def frame_for_stamp(stamps: list, want_ns: int, tol_ns: int):
    """Index in the sorted usable ``stamps`` of the frame to refine for a request stamp, or None.

    ``want_ns == 0``: the newest. A frame within ``tol_ns`` of the stamp: that one. A stamp inside
    the buffer's range (within ``tol_ns`` of its ends) whose own frame is not usable - its mask never
    arrived because the segmentation skipped it - gets the nearest usable frame (the response
    carries that frame's stamp; the tracker re-predicts from it). Outside the range: None.
    """
    if not stamps:
        return None
    if want_ns == 0:
        return len(stamps) - 1
    import bisect

    i = bisect.bisect_left(stamps, want_ns)
    near = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
    best = min(near, key=lambda j: abs(stamps[j] - want_ns))
    if abs(stamps[best] - want_ns) <= tol_ns or stamps[0] - tol_ns <= want_ns <= stamps[-1] + tol_ns:
        return best
    return None


def _stamp_or_zero(msg_or_bytes) -> int:
    """Header stamp [ns] of a message or its CDR bytes; 0 when it cannot be read."""
    try:
        if isinstance(msg_or_bytes, (bytes, bytearray)):
            return msgs.serialized_header_stamp_ns(msg_or_bytes)
        return msgs.header_stamp_ns(msg_or_bytes)
    except (ValueError, AttributeError, TypeError):
        return 0


# executor threads: buffering, the service, diagnostics
REFINEMENT_THREADS = 3
# requests of one burst the service's reader keeps until the executor takes them (the rmw default is
# 10: of 20 concurrent requests 9 were lost and never answered); each is answered, "busy" at once
# while another is refined. 64 lost 12-16 of test_fuzz_graph's 100 requests (5 batches of 20 during a
# burst of malformed input that keeps the executor busy): a pending request costs its few hundred
# bytes, so the queue holds far more than a client sends at once
SERVICE_QUEUE_DEPTH = 256
SERVICE_QOS = QoSProfile(depth=SERVICE_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)


class RefinementNode(GuardedNode):
    def __init__(self, bus=None):
        super().__init__("refinement_node")
        self.bus = bus  # LocalBus when the graph runs in one process (hp_ros.nodes.graph_process)
        p = declare_parameters(self, {**COMMON_PARAMS, **own_params()})
        self.p = p
        from hp_ros.core.refine import Refiner

        self.hand = load_hand(p)
        self.obj = load_object(p)
        cfg = RefineConfig(max_iterations=int(p["max_iterations"]), roi_size=int(p["roi_size"]),
                           num_hypotheses=int(p["num_hypotheses"]),
                           early_stop_patience=int(p["early_stop_patience"]),
                           optimize_camera_hand=bool(p["optimize_camera_hand"]),
                           optimize_joint_offsets=bool(p["optimize_joint_offsets"]))
        self.device = resolve_device(p["device"])
        if self.device.fallback:
            self.get_logger().error(f"device {p['device']!r} is not usable here ({self.device.fallback}): "
                                    f"refining on the CPU")
        self.refiner = Refiner(self.obj, self.hand, cfg, weights_from_params(p), device=self.device.torch)
        from hp_ros.core.global_pose import GlobalPoseSearch
        from hp_ros.core.segmentation.model import warm_sdf_grid

        self.global_search = GlobalPoseSearch(self.obj)
        warm_sdf_grid(self.obj, str(self.device.torch))  # the depth fit's grid: seconds, not in a request
        self.errors = self.problems  # refused input, counted in /diagnostics (guard.ProblemLog)
        self.stamps = stamp_detector(p)  # each stream's stamps against its own recent ones
        self._serving = threading.Lock()  # one refinement at a time; others are answered "busy"
        self._serving_since = 0.0
        self._typical_s = 5.0             # duration of the last refinement [s] (retry hint)
        self.served = deque(maxlen=100)   # (wall s, CPU s of the serving thread) of the successful requests
        self.lock = threading.Lock()
        self.frames: "OrderedDict[int, dict]" = OrderedDict()  # stamp_ns -> {rgb, object_mask, hand_mask, depth}
        self.camera = None
        self._camera_frame_seen = None
        self.tracked_pose = None   # (stamp_ns, T) from the tracker
        self.refined = None        # (stamp_ns, T) last result
        self.busy = False
        self.counts = {"requests": 0, "succeeded": 0, "failed": 0, "rejected": 0, "not_ready": 0, "answered_busy": 0,
                       "frames_dropped": 0}
        self.joints = JointStateBuffer(self.hand.joint_state_mapper(), stamps=self.stamps)
        self.cam_to_hand = CameraToHand(self, p["camera_frame"], p["hand_base_frame"],
                                        camera_to_hand_from_param(p["camera_to_hand"]))

        # Inputs wait in their DDS readers' histories (keep-last) and are taken when a request
        # or the diagnostics timer needs them (hp_ros.nodes.deferred): the idle node runs no
        # Python per message and decodes nothing nobody asked for. Images stay serialised until a
        # request refines their frame (in one process with the segmentation node: the message
        # objects it received).
        n = int(p["buffer_size"])
        reader = lambda t, topic, depth, raw=False: DeferredReader(self, bus, t, topic, depth, raw=raw)  # noqa: E731
        self.image_topics = {"rgb": graph.CAMERA_TOPICS["color_image"], "object_mask": graph.TOPICS["object_mask"],
                             "hand_mask": graph.TOPICS["hand_mask"]}
        if p["use_depth"]:
            self.image_topics["depth"] = graph.CAMERA_TOPICS["depth_image"]
        self._open_reader = lambda topic: reader(Image, topic, n, raw=True)  # noqa: E731
        self.image_readers = {}  # kind -> DeferredReader while the images are subscribed (open_images)
        # in one process (a bus) images are handed over as objects, and a bus cannot unsubscribe: always open
        self.images_on_demand = bus is None and float(p["image_linger"]) >= 0
        self._images_until = time.monotonic() + max(0.0, float(p["image_linger"]))  # closed after (monotonic)
        self._opened_after_ns = 0  # newest camera_info stamp when the images were last opened
        self._newest_info_ns = 0
        self.info_reader = reader(CameraInfo, graph.CAMERA_TOPICS["color_info"], 1)
        # joint states over the buffered frames' span (30 Hz frames, 100 Hz joints) and a margin
        self.joint_reader = reader(JointState, graph.JOINT_STATES, max(200, int(2 * 100 * n / 30)))
        self.pose_reader = reader(PoseWithCovarianceStamped, graph.TOPICS["object_pose"], 1)
        self.ingested = 0  # messages taken from the readers (counted in /diagnostics)
        self.decoded = 0   # images decoded (only for requests)
        self.image_openings = 0  # times the image subscriptions were opened
        self.open_images()  # from start-up: a cold start's first request comes with the first frames
        data = MutuallyExclusiveCallbackGroup()
        service = ReentrantCallbackGroup()  # a request during a refinement is answered "busy" at once
        self.pub = publisher(self, bus, PoseWithCovarianceStamped, graph.TOPICS["refined_pose"], OUTPUT_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self.create_timer(float(p["diagnostics_period"]), self.publish_diagnostics, callback_group=data)
        self.create_service(RefinePose, graph.SERVICES["refine_pose"], self.on_refine, callback_group=service,
                            qos_profile=SERVICE_QOS)
        self.get_logger().info(f"refinement service on {graph.SERVICES['refine_pose']} "
                               f"(buffer {p['buffer_size']} frames, {p['max_iterations']} iterations, "
                               f"device {self.device.torch})")

    # ------------------------------------------------------------------ buffering
    def _slot(self, stamp: int) -> dict:
        """Frame slot for ``stamp``: an existing one within ``sync_tolerance`` or a new one (lock held)."""
        tol = int(self.p["sync_tolerance"] * 1e9)
        best = min(self.frames, key=lambda s: abs(s - stamp), default=None)
        if best is not None and abs(best - stamp) <= tol:
            return self.frames[best]
        # frames far ahead of an accepted stamp belong to a timeline its stream left (hp_ros.io.stamps):
        # a looping bag's new frames replace them instead of being "older than the buffer"
        jump = int(self.p["max_stamp_jump"] * 1e9)
        for s in [s for s in self.frames if s > stamp + jump]:
            del self.frames[s]
        if len(self.frames) >= int(self.p["buffer_size"]) and stamp < next(iter(self.frames)):
            return {}  # older than the whole (full) buffer: dropped (the caller's dict is discarded)
        self.frames[stamp] = slot = {}
        self.frames = OrderedDict(sorted(self.frames.items()))
        newest = next(reversed(self.frames))
        max_age = int(self.p["max_frame_age"] * 1e9)
        while len(self.frames) > int(self.p["buffer_size"]) or next(iter(self.frames)) < newest - max_age:
            self.frames.popitem(last=False)  # evicted by count and by age
            self.counts["frames_dropped"] += 1
        return slot

    # ------------------------------------------------------------------ image subscriptions
    def open_images(self) -> bool:
        """Subscribe to the image streams unless they are open; True when this call opened them."""
        if self.images_on_demand:
            self._images_until = max(self._images_until, time.monotonic() + float(self.p["image_linger"]))
        with self.lock:
            if self.image_readers:
                return False
            self.image_readers = {kind: self._open_reader(topic) for kind, topic in self.image_topics.items()}
            self._opened_after_ns = self._newest_info_ns
            self.image_openings += 1
        return True

    def close_idle_images(self) -> None:
        """Unsubscribe from the image streams (and forget the buffered frames) once ``image_linger``
        has passed since the stream's first frame or the last request, unless a request is being
        served. (Until the first camera_info the images stay subscribed: a cold start asks with
        the first frames, however long the graph took to come up.)"""
        if not self.images_on_demand or self.busy:
            return
        if not self._newest_info_ns:
            self._take_camera_info(self.info_reader.take())
            self._images_until = time.monotonic() + float(self.p["image_linger"])
            return
        if time.monotonic() < self._images_until:
            return
        with self.lock:
            if not self.image_readers:
                return
            for rd in self.image_readers.values():
                rd.close(self)
            self.image_readers = {}
            self.frames.clear()

    # Buffering keeps the messages themselves: they are decoded only for the few frames a request
    # refines, not for every frame at 30 Hz (the node spends its idle time doing nothing).
    def ingest(self) -> None:
        """Take what the readers received since the last call into the frame buffer, the joint
        state buffer, the camera model and the tracked pose."""
        with self.lock:
            for kind, rd in self.image_readers.items():
                batch = rd.take()
                self.stamps.skip_gap(kind, [_stamp_or_zero(d) for d, _ in batch])  # takes are seconds apart
                for data, _info in batch:
                    self.ingested += 1
                    self.on_buffered(data, kind)
            batch = self.joint_reader.take()
            self.stamps.skip_gap("joint_states", [_stamp_or_zero(m) for m, _ in batch])
            for msg, _info in batch:
                self.ingested += 1
                self.on_joint_state(msg)
            infos = self.info_reader.take()
            poses = self.pose_reader.take()
        self.ingested += len(infos) + len(poses)
        self._take_camera_info(infos)
        if poses:
            self.on_object_pose(poses[-1][0])

    def _take_camera_info(self, infos: list) -> None:
        """The newest of the camera_info ``(msg, info)`` taken: the camera model and the stream's newest stamp."""
        if infos:
            self._newest_info_ns = max(self._newest_info_ns, _stamp_or_zero(infos[-1][0]))
            self.on_camera_info(infos[-1][0])

    def on_buffered(self, data, kind: str) -> None:
        """A sensor_msgs/Image (colour, mask or depth), serialised (bytes) or a message object
        (from the in-process bus): stored under its header stamp (lock held). Its header is checked
        first (encoding, size, step and data length, frame; read from the bytes without
        deserialising the pixels), so a malformed image never takes the place of a frame."""
        try:
            header = msgs.serialized_image_header(data) if isinstance(data, (bytes, bytearray)) else data
            msgs.check_image_header(header, self._ENCODINGS[kind], self.p["camera_frame"])
            stamp = header.stamp_ns if isinstance(header, msgs.ImageHeader) else msgs.header_stamp_ns(data)
        except ValueError as e:
            key = f"{kind}_{e.kind.split('_', 1)[1]}" if getattr(e, "kind", None) else f"{kind}_data"
            self.errors.warn(key, f"{kind} skipped: {e}", getattr(e, "value", None))
            return
        # the stamp against its own stream's recent ones: a stray (far future, far past) never
        # takes a place in the buffer; a confirmed jump of the timeline empties it
        v = self.stamps.check(kind, stamp)
        if not v.accepted:
            self.errors.warn(f"{kind}_{v.kind}", f"{kind} skipped: {v.text}")
            return
        if v.verdict == "reset" and v.jump_ns < 0:
            # back: the buffered frames are of a timeline that will not come again. (Forward - all
            # streams ahead at once, also what a flood between two takes of the readers looks like -
            # the buffer is kept: its frames age out.)
            self.get_logger().info(f"{v.text}: frame buffer emptied", throttle_duration_sec=5.0)
            self.frames.clear()
            self.joints.clear()
        if self.camera is not None and (header.width, header.height) != (self.camera.width, self.camera.height):
            self.errors.warn(f"{kind}_size", f"{kind} {header.width}x{header.height} skipped: camera_info says "
                             f"{self.camera.width}x{self.camera.height}")
            return
        self._slot(stamp)[kind] = data

    _ENCODINGS = {"rgb": ("rgb8", "bgr8"), "depth": ("16UC1", "32FC1"),
                  "object_mask": ("mono8", "8UC1"), "hand_mask": ("mono8", "8UC1")}

    def _decode(self, kind: str, data: bytes) -> np.ndarray:
        """Buffered serialised image -> array (rgb (H,W,3) uint8 RGB, masks (H,W) bool, depth raw);
        ValueError for an encoding the kind does not accept."""
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(data, Image) if isinstance(data, bytes) else data
        if msg.encoding not in self._ENCODINGS[kind]:
            raise ValueError(f"{kind} image has encoding {msg.encoding!r} (expected one of {list(self._ENCODINGS[kind])})")
        arr = msgs.image_to_numpy(msg)
        self.decoded += 1
        if kind == "rgb":
            return np.ascontiguousarray(arr[..., ::-1] if msg.encoding == "bgr8" else arr)
        if kind == "depth":
            from hp_ros.core.segmentation.image import depth_to_metres

            return depth_to_metres(arr, msg.encoding)
        return arr > 0

    def on_camera_info(self, msg) -> None:
        from hp_ros.core.camera import Camera

        key = (tuple(msg.k), tuple(msg.p), msg.width, msg.height, msg.binning_x, msg.binning_y,
               msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height)
        if key == getattr(self, "_camera_key", None) and msg.header.frame_id == self._camera_frame_seen:
            return  # the same intrinsics every frame: nothing to rebuild
        try:
            msgs.camera_info_to_intrinsics(msg, self.p["camera_frame"])  # validated at the door
            cam = Camera.from_camera_info(msg)
        except ValueError as e:
            self.errors.reject(e, "camera_info", "camera_info skipped: ")
            return
        self._camera_key, self._camera_frame_seen = key, msg.header.frame_id
        self.camera = cam

    def on_joint_state(self, msg) -> None:
        try:
            self.joints.add(msg)
        except ValueError as e:
            self.errors.reject(e, "joint_states", "joint state skipped: ")

    def on_object_pose(self, msg) -> None:
        try:  # the whole message validated (pose, covariance, frame), not only what is used
            validate.check_covariance(msg.pose.covariance, "object_pose")
            if msg.header.frame_id:
                validate.check_frame(msg.header.frame_id, self.p["camera_frame"], "object_pose")
            self.tracked_pose = (msgs.header_stamp_ns(msg), msgs.pose_to_matrix(msg))
        except (ValueError, TypeError) as e:
            self.errors.reject(e, "object_pose", "object pose ignored: ")

    def usable_stamps(self) -> list:
        self.ingest()
        with self.lock:
            return [s for s, f in self.frames.items() if "rgb" in f and "object_mask" in f]

    def publish_diagnostics(self) -> None:
        # what the last request took from the readers: taking (copying) every frame just to count
        # them cost ~1 ms of CPU per camera frame; the readers hold the newest buffer_size frames
        self.close_idle_images()
        with self.lock:
            usable = [s for s, f in self.frames.items() if "rgb" in f and "object_mask" in f]
        level = DiagnosticStatus.OK
        message = "busy" if self.busy else ("ready" if self.camera is not None or not self.counts["requests"]
                                            else "no camera_info yet")
        values = {"buffered_frames": len(usable), "newest_stamp_ns": usable[-1] if usable else 0,
                  "busy": int(self.busy), "bad_messages": self.errors.total(), "messages_taken": self.ingested,
                  "images_decoded": self.decoded, "images_subscribed": int(bool(self.image_readers)),
                  "image_openings": self.image_openings, **self.counts,
                  "stamp_resets": self.stamps.resets, **self.problem_values()}
        if self.served:  # wall and CPU seconds per request, in the running graph (bench_graph.py reads them)
            wall, cpu = np.asarray(list(self.served)).T
            values.update(refine_wall_s_median=round(float(np.median(wall)), 3), refine_wall_s_max=round(float(wall.max()), 3),
                          refine_cpu_s_median=round(float(np.median(cpu)), 3))
        self.diag_pub.publish(diagnostics_message(self, "hp_ros/refinement_node", level, message, values))

    # ------------------------------------------------------------------ service
    def on_refine(self, request, response):
        self.counts["requests"] += 1
        if not self._serving.acquire(blocking=False):
            self.counts["answered_busy"] += 1
            elapsed = time.monotonic() - self._serving_since
            response.success = False
            response.message = (f"{graph.REFINE_BUSY} another refine_pose request is being served ({elapsed:.1f} s so "
                                f"far); retry in about {max(1.0, self._typical_s - elapsed):.0f} s")
            return response
        self.busy = True
        self._not_ready = False  # set by _fail(not_ready=True): a refusal before the first frame (logged at INFO)
        self._ran = False        # a refinement ran (its wall time counts, also for a rejected answer)
        self._serving_since = time.monotonic()
        cpu0 = time.thread_time()  # the request's own CPU time (torch runs one thread here): survives load
        try:
            self._serve(request, response)
        except Exception as e:  # noqa: BLE001 - a request must never take the node down
            response.success = False
            response.message = f"refinement failed: {type(e).__name__}: {e}"
        finally:
            self.busy = False
            wall = time.monotonic() - self._serving_since
            self._typical_s = max(1.0, wall)
            if self._ran:  # answers, rejected ones too; refusals (no frames yet, bad requests) take no refinement
                self.served.append((wall, time.thread_time() - cpu0))
            if self.images_on_demand:  # the linger counts from the answer
                self._images_until = time.monotonic() + float(self.p["image_linger"])
            self._serving.release()
        self.counts["succeeded" if response.success else "not_ready" if self._not_ready
                    else "rejected" if response.message.startswith(REJECTED) else "failed"] += 1
        if self._not_ready:  # the graph is starting: the client asks again, quietly
            self.get_logger().info(f"refine_pose: {response.message}", throttle_duration_sec=10.0)
        elif not response.success:
            self.get_logger().warning(f"refine_pose: {response.message}")
        return response

    def _recent_pose(self, stamp: int):
        """The newest of the tracked and the last refined pose ``(4, 4)`` when it is at most ``max_pose_age``
        from ``stamp``; None (a global estimate) otherwise."""
        cands = [c for c in (self.tracked_pose, self.refined) if c is not None]
        if not cands:
            return None
        newest = max(cands, key=lambda c: c[0])
        return newest[1] if abs(stamp - newest[0]) <= self.p["max_pose_age"] * 1e9 else None

    def _fail(self, response, text: str, not_ready: bool = False):
        """A failure answer; ``not_ready``: the node has no camera_info or frame yet (message ``not ready: ...``)."""
        response.success = False
        response.message = f"{NOT_READY} {text}" if not_ready else text
        self._not_ready = not_ready
        return response

    def _wait_for(self, ready, period: float = 0.02, extra: float = 0.0, wait: Optional[float] = None) -> bool:
        """Poll ``ready()`` for up to ``wait`` (default ``request_wait`` + ``extra``) seconds while the
        buffering thread runs (not past a shutdown); its result."""
        deadline = time.monotonic() + (self.p["request_wait"] + extra if wait is None else wait)
        while not ready():
            if time.monotonic() >= deadline or not self.context.ok():
                return False
            time.sleep(period)
        return True

    def _first_frame(self, need_depth: bool) -> bool:
        """The camera model and a usable frame are there (with ``need_depth``: the newest has its depth)."""
        stamps = self.usable_stamps()
        if self.camera is None or not stamps:
            return False
        if not need_depth:
            return True
        with self.lock:
            return "depth" in self.frames.get(stamps[-1], {})

    def _serve(self, request, response):
        import torch

        from hp_ros.core.refine import FrameObservation

        terms = list(request.terms) or list(self.p["default_terms"])
        names = priors.term_names()
        bad = [t for t in terms if t not in names]
        if bad:
            return self._fail(response, f"unknown term(s) {bad}; valid terms: {list(names)}")
        max_it = int(request.max_iterations) or int(self.p["max_iterations"])
        if max_it > MAX_ITERATIONS_LIMIT:
            return self._fail(response, f"max_iterations {max_it} exceeds the limit {MAX_ITERATIONS_LIMIT}")
        window = max(int(request.window_length), 1)
        if window > int(self.p["buffer_size"]):
            return self._fail(response, f"window_length {window} is longer than the buffer ({self.p['buffer_size']} "
                                        f"frames, buffer_size)")
        T_request = None
        if request.use_initial_pose:  # checked before anything is subscribed or waited for
            frame = request.initial_pose.header.frame_id
            if frame and frame != self.p["camera_frame"]:
                return self._fail(response, f"initial pose frame {frame!r} is not the camera frame "
                                            f"{self.p['camera_frame']!r}")
            p, o = request.initial_pose.pose.position, request.initial_pose.pose.orientation
            vals = [p.x, p.y, p.z, o.x, o.y, o.z, o.w]
            if not all(math.isfinite(v) for v in vals):
                return self._fail(response, "initial pose contains NaN or inf")
            try:
                T_request = msgs.pose_to_matrix(request.initial_pose)
            except ValueError as e:
                return self._fail(response, f"invalid initial pose: {e}")
        self.ingest()  # what arrived since the last request (camera_info, frames, joint states, pose)
        opened = self.open_images()
        # the cold start's first request comes at graph start-up, before the first frame (and its masks,
        # and for a global estimate its depth) is buffered: served as soon as it is, within first_frame_wait
        need_depth = (not request.use_initial_pose and "depth" in self.image_topics
                      and self.tracked_pose is None and self.refined is None)
        first_wait = float(self.p["first_frame_wait"])
        if not self._first_frame(need_depth):
            self._wait_for(lambda: self._first_frame(need_depth), wait=first_wait)
        if self.camera is None:
            return self._fail(response, f"no camera_info received yet (waited {first_wait:g} s)", not_ready=True)
        want = msgs.stamp_to_ns(request.stamp)
        # a request for the newest frame (the tracker's, when LOST) can arrive before that frame's
        # image and masks: give the buffering thread a moment (the newest frame is kept anyway);
        # images subscribed to just now: wait for the first frames (discovery, masks) a little longer
        tol = int(self.p["sync_tolerance"] * 1e9)
        if want > 0 or opened:
            def frames_there():
                usable = self.usable_stamps()
                return len(usable) >= window and max(usable, default=0) >= want - tol
            self._wait_for(frames_there, extra=float(self.p["open_wait"]) if opened else 0.0)
        stamps = self.usable_stamps()
        if not stamps:
            return self._fail(response, f"no synchronised frames buffered yet after {first_wait:g} s (need a colour "
                                        f"image and an object mask with the same stamp)", not_ready=True)
        idx = frame_for_stamp(stamps, want, tol)
        passed = idx is None and 0 < want < stamps[0] and want <= self._opened_after_ns + tol
        if passed:  # the frame went by before the images were subscribed: the first frames since
            idx = min(window, len(stamps)) - 1
        if idx is None:
            return self._fail(response, f"no buffered frame at stamp {want} ns (buffer holds "
                                        f"{stamps[0]}..{stamps[-1]} ns, {len(stamps)} frames)")
        if window > idx + 1:
            return self._fail(response, f"window_length {window} is longer than the {idx + 1} buffered frames "
                                        f"ending at the requested stamp")
        use = stamps[idx + 1 - window: idx + 1]

        # initial pose
        if request.use_initial_pose:
            T0 = T_request
        else:
            T0 = self._recent_pose(use[-1])  # None: a global estimate from the frame (below)
            if T0 is None and "depth" not in self.image_topics:
                return self._fail(response, "no initial pose: set use_initial_pose, wait for /hp_ros/object_pose, "
                                            "or set use_depth (a global estimate needs depth)")
        if T0 is not None and T0[2, 3] <= 0:
            return self._fail(response, "initial pose is behind the camera (z <= 0)")

        # frames of the window (copies under the lock: buffering continues meanwhile)
        T_cam_hand = self.cam_to_hand.T_cam_hand
        frames, no_hand = [], None
        gap = int(self.p["max_joint_gap"] * 1e9)
        # joint states (100 Hz, one message per executor cycle) can lag behind the newest images:
        # give the buffering thread a moment to catch up with the requested stamps
        def joints_cover():
            self.ingest()
            with self.lock:
                latest = self.joints.latest()
            return latest is not None and latest[0] >= max(use)

        self._wait_for(joints_cover)
        with self.lock:
            slots = [dict(self.frames[s]) for s in use]
            qs = [self.joints.at(s, gap) for s in use]
        if T_cam_hand is None:
            no_hand = "no camera->hand transform"
        elif any(q is None for q in qs):
            no_hand = (f"no joint states around the frame stamps (buffer {len(self.joints.stamps)} joint states"
                       + (f", {self.joints.stamps[0]}..{self.joints.stamps[-1]} ns)" if self.joints.stamps else ")"))
        if T0 is None and "depth" not in slots[-1]:  # checked before decoding anything
            return self._fail(response, "no initial pose and no depth image for the requested frame (a global "
                                        "estimate needs the aligned depth with the same stamp)")
        hand_masks = all("hand_mask" in f for f in slots)
        try:
            slots = [{k: (self._decode(k, v) if k in ("rgb", "object_mask", "hand_mask", "depth") else v)
                      for k, v in f.items()} for f in slots]
        except ValueError as e:
            return self._fail(response, f"buffered image could not be decoded: {e}")
        for s, f, q in zip(use, slots, qs):
            frames.append(FrameObservation(
                rgb=f["rgb"], object_mask=f["object_mask"], hand_mask=f.get("hand_mask") if hand_masks else None,
                depth=f.get("depth"), q=None if no_hand else q, T_cam_hand=None if no_hand else self.cam_to_hand.at(s),
                stamp_ns=s))
        if self.camera.height != frames[0].rgb.shape[0] or self.camera.width != frames[0].rgb.shape[1]:
            return self._fail(response, f"image size {frames[0].rgb.shape[1]}x{frames[0].rgb.shape[0]} does not "
                                        f"match camera_info {self.camera.width}x{self.camera.height}")
        for f in frames:
            if f.object_mask.shape != f.rgb.shape[:2]:
                return self._fail(response, "object mask and image sizes differ")

        how, rejection = "", ""
        if T0 is None:  # no pose to start from: a checked global estimate from the last frame (global_pose.py)
            from hp_ros.core.global_pose import cold_start

            check = AnswerCheck(float(self.p["global_min_iou"]), float(self.p["global_max_penetration_mm"]),
                                int(self.p["global_attempts"]))
            res, found = cold_start(self.refiner, self.global_search, frames, self.camera,
                                    max_iterations=max_it if request.max_iterations else int(self.p["global_iterations"]),
                                    num_hypotheses=int(self.p["global_hypotheses"]), terms=terms, check=check)
            if res is None:
                return self._fail(response, "no initial pose, and the object mask has too few depth pixels for a "
                                            "global estimate")
            self._ran = True
            rejected = [a for a in found.attempts if a is not None]
            if len(rejected) == len(found.attempts):  # every search's answer failed the check
                rejection = (f"{REJECTED} best {check.problem(res)} after {len(found.attempts)} global "
                             f"search(es) (global_min_iou / global_max_penetration_mm); the best-fitting pose is "
                             f"in the response, not published; ")
            how = (f"global estimate {found.elapsed_s:.2f} s"
                   + (f" after {len(rejected)} rejected ({'; '.join(rejected)})" if rejected else "") + ", ")
        else:
            self._ran = True
            res = self.refiner.refine(frames, self.camera, torch.as_tensor(T0, dtype=torch.float32),
                                      max_iterations=max_it, terms=terms)
        cam = self.p["camera_frame"]
        T = res.T_cam_obj.double().numpy()
        response.poses = [msgs.make_pose_stamped(T[i], s, cam, PoseStamped) for i, s in enumerate(use)]
        iou = float(res.mask_iou[-1])
        sigma = np.asarray(self.p["refined_pose_sigma"], float) / max(iou if math.isfinite(iou) else 0.0, 0.1)
        cov = np.diag(sigma ** 2)
        response.pose = msgs.make_pose_with_covariance_stamped(T[-1], cov, use[-1], cam, PoseWithCovarianceStamped)
        response.initial_loss = float(res.initial_loss)
        response.final_loss = float(res.final_loss)
        response.loss_terms = list(res.final_terms)
        response.loss_values = [float(v) for v in res.final_terms.values()]
        response.mask_iou = iou
        response.max_penetration_mm = float(res.max_penetration_mm[-1])
        response.contact_count = int(res.contact_count[-1])
        response.iterations = int(res.iterations)
        response.elapsed_s = float(res.elapsed_s)
        # a rejected global answer is a failure: the tracker asks again with a later frame rather than
        # re-initialise from it (its pose stays in the response, for a user's inspection)
        response.success = not rejection
        substituted = want != 0 and abs(use[-1] - want) > tol
        response.message = (f"{rejection}{how}refined {len(use)} frame(s) in {res.iterations} iterations, "
                            f"{res.elapsed_s:.2f} s, mask IoU {iou:.3f}"
                            + (f"; frame {use[-1]} instead of {want} ("
                               + ("it went by before the images were subscribed" if passed else "not segmented") + ")"
                               if substituted else "") + (f"; hand not used: {no_hand}" if no_hand else ""))
        if rejection:  # logged once (a warning) by on_refine; neither kept as a start nor published
            return response
        self.refined = (use[-1], T[-1])
        self.get_logger().info(f"refine_pose: {response.message} (loss {res.initial_loss:.4g} -> {res.final_loss:.4g})")
        if self.p["publish_refined_pose"]:
            self.pub.publish(response.pose)
        return response


def main(args=None):
    return run_node(RefinementNode, "refinement_node", args, lambda: PoolExecutor(num_threads=REFINEMENT_THREADS))


if __name__ == "__main__":
    raise SystemExit(main())
