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
(``RefineConfig``, ``global_pose``). The parameters: :mod:`hp_ros.nodes.refinement_params`; the
inputs and the frame buffer: :mod:`hp_ros.nodes.refinement_inputs`.

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
"""
from __future__ import annotations

from hp_ros.nodes import exit_quietly_while_loading

exit_quietly_while_loading(__name__)  # before the imports below: they take seconds

import math
import threading
import time
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from hp_ros_msgs.srv import RefinePose
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.node import Node

from hp_ros import graph
from hp_ros.core.device import resolve_device
from hp_ros.core import priors
from hp_ros.core.global_pose import AnswerCheck
from hp_ros.core.refine import RefineConfig
from hp_ros.io import msgs
from hp_ros.nodes.calibration import CameraToHand
from hp_ros.nodes.diagnostics import diagnostics_message
from hp_ros.nodes.guard import GuardedNode
from hp_ros.nodes.executor import PoolExecutor
from hp_ros.nodes.loaders import camera_to_hand_from_param, load_hand, load_object
from hp_ros.nodes.local_bus import publisher
from hp_ros.nodes.params import COMMON_PARAMS, declare_parameters, stamp_detector
from hp_ros.nodes.process import run_node
from hp_ros.nodes.qos import OUTPUT_QOS
from hp_ros.nodes.refinement_inputs import RefinementInputs
from hp_ros.nodes.refinement_params import OWN_PARAMS, own_params, weights_from_params  # noqa: F401 (OWN_PARAMS: README)

MAX_ITERATIONS_LIMIT = 2000


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


class RefinementNode(RefinementInputs, GuardedNode):
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
        self.refined = None        # (stamp_ns, T) last result
        self.busy = False
        self.counts = {"requests": 0, "succeeded": 0, "failed": 0, "answered_busy": 0, "frames_dropped": 0}
        self.cam_to_hand = CameraToHand(self, p["camera_frame"], p["hand_base_frame"],
                                        camera_to_hand_from_param(p["camera_to_hand"]))
        self._start_inputs(bus, p)  # the frame buffer and the deferred readers; the images subscribed
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
            response.message = (f"busy: another refine_pose request is being served ({elapsed:.1f} s so far); "
                                f"retry in about {max(1.0, self._typical_s - elapsed):.0f} s")
            return response
        self.busy = True
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
            if response.success:  # answers; failures (no frames yet, bad requests) take milliseconds
                self.served.append((wall, time.thread_time() - cpu0))
            if self.images_on_demand:  # the linger counts from the answer
                self._images_until = time.monotonic() + float(self.p["image_linger"])
            self._serving.release()
        self.counts["succeeded" if response.success else "failed"] += 1
        if not response.success:
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

    def _fail(self, response, text: str):
        response.success = False
        response.message = text
        return response

    def _wait_for(self, ready, period: float = 0.02, extra: float = 0.0) -> bool:
        """Poll ``ready()`` for up to ``request_wait`` (+ ``extra``) seconds while the buffering thread runs; its result."""
        deadline = time.monotonic() + self.p["request_wait"] + extra
        while not ready():
            if time.monotonic() >= deadline:
                return False
            time.sleep(period)
        return True

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
        if self.camera is None:
            return self._fail(response, "no camera_info received yet")
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
            return self._fail(response, "no synchronised frames buffered yet (need a colour image and an object "
                                        "mask with the same stamp)")
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

        how = ""
        if T0 is None:  # no pose to start from: a checked global estimate from the last frame (global_pose.py)
            from hp_ros.core.global_pose import cold_start

            res, found = cold_start(self.refiner, self.global_search, frames, self.camera,
                                    max_iterations=max_it if request.max_iterations else int(self.p["global_iterations"]),
                                    num_hypotheses=int(self.p["global_hypotheses"]), terms=terms,
                                    check=AnswerCheck(float(self.p["global_min_iou"]),
                                                      float(self.p["global_max_penetration_mm"]),
                                                      int(self.p["global_attempts"])))
            if res is None:
                return self._fail(response, "no initial pose, and the object mask has too few depth pixels for a "
                                            "global estimate")
            rejected = [a for a in found.attempts if a is not None]
            how = (f"global estimate {found.elapsed_s:.2f} s"
                   + (f" after {len(rejected)} rejected ({'; '.join(rejected)})" if rejected else "") + ", ")
        else:
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
        response.success = True
        substituted = want != 0 and abs(use[-1] - want) > tol
        response.message = (f"{how}refined {len(use)} frame(s) in {res.iterations} iterations, {res.elapsed_s:.2f} s, "
                            f"mask IoU {iou:.3f}"
                            + (f"; frame {use[-1]} instead of {want} ("
                               + ("it went by before the images were subscribed" if passed else "not segmented") + ")"
                               if substituted else "") + (f"; hand not used: {no_hand}" if no_hand else ""))
        self.refined = (use[-1], T[-1])
        self.get_logger().info(f"refine_pose: {response.message} (loss {res.initial_loss:.4g} -> {res.final_loss:.4g})")
        if self.p["publish_refined_pose"]:
            self.pub.publish(response.pose)
        return response


def main(args=None):
    return run_node(RefinementNode, "refinement_node", args, lambda: PoolExecutor(num_threads=REFINEMENT_THREADS))


if __name__ == "__main__":
    raise SystemExit(main())
