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
inputs and the frame buffer: :mod:`hp_ros.nodes.refinement_inputs`; the service:
:mod:`hp_ros.nodes.refinement_service`.

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

import threading

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from hp_ros_msgs.srv import RefinePose
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node

from hp_ros import graph
from hp_ros.core.device import resolve_device
from hp_ros.core.refine import RefineConfig
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
from hp_ros.nodes.refinement_service import (  # noqa: F401 (also importable from here)
    MAX_ITERATIONS_LIMIT, SERVICE_QOS, SERVICE_QUEUE_DEPTH, RefinePoseService, frame_for_stamp)

# executor threads: buffering, the service, diagnostics
REFINEMENT_THREADS = 3


class RefinementNode(RefinementInputs, RefinePoseService, GuardedNode):
    def __init__(self, bus=None):
        super().__init__("refinement_node")
        self.bus = bus  # LocalBus when the graph runs in one process (hp_ros.nodes.graph_process)
        p = declare_parameters(self, {**COMMON_PARAMS, **own_params()})
        self.p = p
        self._load_refiner(p)
        self.errors = self.problems  # refused input, counted in /diagnostics (guard.ProblemLog)
        self.stamps = stamp_detector(p)  # each stream's stamps against its own recent ones
        self._start_serving()
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "succeeded": 0, "failed": 0, "rejected": 0, "not_ready": 0, "answered_busy": 0,
                       "frames_dropped": 0}
        self.cam_to_hand = CameraToHand(self, p["camera_frame"], p["hand_base_frame"],
                                        camera_to_hand_from_param(p["camera_to_hand"]))
        self._start_inputs(bus, p)  # the frame buffer and the deferred readers; the images subscribed
        data = MutuallyExclusiveCallbackGroup()
        service = ReentrantCallbackGroup()  # a request during a refinement is answered "busy" at once
        self.pub = publisher(self, bus, PoseWithCovarianceStamped, graph.TOPICS["refined_pose"], OUTPUT_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self.create_timer(float(p["diagnostics_period"]), self.publish_diagnostics, callback_group=data)
        self._start_linger_timer(data)
        self.create_service(RefinePose, graph.SERVICES["refine_pose"], self.on_refine, callback_group=service,
                            qos_profile=SERVICE_QOS)
        self.get_logger().info(f"refinement service on {graph.SERVICES['refine_pose']} "
                               f"(buffer {p['buffer_size']} frames, {p['max_iterations']} iterations, "
                               f"device {self.device.torch})")

    def _load_refiner(self, p: dict) -> None:
        """The hand, the object, the device and the refiner with its global search (start-up: seconds)."""
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
        # one cold start on a made-up frame: what the first request would build (~0.1 s of CPU) is built now
        from hp_ros.core.cold_start import warm_up_cold_start

        try:
            warm_up_cold_start(self.refiner, self.global_search)
        except Exception as e:  # noqa: BLE001 - a warm-up only saves time: the first request builds it then
            self.get_logger().warning(f"warm-up cold start failed ({type(e).__name__}: {e}); the first request "
                                      f"builds what it needs")

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


def main(args=None):
    return run_node(RefinementNode, "refinement_node", args, lambda: PoolExecutor(num_threads=REFINEMENT_THREADS))


if __name__ == "__main__":
    raise SystemExit(main())
