"""Segmentation node: hand and object masks, object observation, fingertip observations, overlay.

Thin wrapper around :class:`hp_ros.core.segmentation.segmenter.Segmenter`: messages -> arrays ->
``Segmenter.segment`` -> messages. Masks (mono8 0/255) and the overlay carry the colour image's
header; they are built and published only while something subscribes to them (the refinement
node does around its requests, RViz when shown). Depth (optional) is paired with colour by header stamp (nearest within
``depth_max_dt``, small queue); joint states are interpolated to the image stamp. The input
intake is in :mod:`.segmentation_inputs`, the publishing and /diagnostics in :mod:`.segmentation_outputs`.
"""
from __future__ import annotations

from hp_ros.nodes import exit_quietly_while_loading

exit_quietly_while_loading(__name__)  # before the imports below: they take seconds

import collections
import threading
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState

from hp_ros.core.device import resolve_device
from hp_ros.graph import CAMERA_TOPICS, JOINT_STATES, TOPICS
from hp_ros.io import msgs
from hp_ros.io.validate import InvalidMessage, check_frame, check_image_size
from hp_ros.nodes.buffers import JointStateBuffer
from hp_ros.nodes.calibration import CameraToHand
from hp_ros.nodes.loaders import camera_to_hand_from_param, load_hand, load_object, warm_up_segmenter
from hp_ros.nodes.deferred import DeferredReader
from hp_ros.nodes.guard import GuardedNode, SupervisedWorker
from hp_ros.nodes.local_bus import subscribe
from hp_ros.nodes.params import COMMON_PARAMS, declare_parameters, ParameterError, stamp_detector
from hp_ros.nodes.process import run_node
from hp_ros.nodes.qos import IMAGE_QOS
from hp_ros.nodes.segmentation_inputs import SegmentationInputs
from hp_ros.nodes.segmentation_outputs import STAGES, SegmentationOutputs  # STAGES: also importable from here
from hp_ros.nodes.segmentation_params import SEG_PARAMS, segmenter_config  # also importable from here

try:  # cv_bridge when importable (a ROS workspace), numpy conversion otherwise
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the installation
    CvBridge = None


class SegmentationNode(SegmentationInputs, SegmentationOutputs, GuardedNode):
    def __init__(self, bus=None):
        super().__init__("segmentation_node")
        self.bus = bus  # LocalBus when the graph runs in one process (hp_ros.nodes.graph_process)
        self.p = p = declare_parameters(self, {**COMMON_PARAMS, **SEG_PARAMS})
        self._set_up_segmentation(p)
        self._set_up_input_state(p)
        # before subscribing: the first frames must not pay for imports/first calls
        warm_up_segmenter(self.hand, self.cfg, self.object_model, self.uses_prior, self.get_logger())
        self._subscribe_inputs(p, bus)
        self._create_outputs(p, bus)
        # restarted when it dies (an exception the per-frame handling could not catch): /diagnostics
        # says ERROR for a while, and frames flow again
        self._worker = SupervisedWorker(self._work, "segmentation", self.problems, lambda: self._running)
        self._worker.start()
        self.get_logger().info(f"segmentation: object backend {p['object_backend']!r}, "
                               f"{'cv_bridge' if self.bridge else 'numpy'} image conversion")

    # ------------------------------------------------------------------ set-up
    def _set_up_segmentation(self, p: dict):
        """The accepted encodings, the observation messages, the Segmenter's settings (checked now,
        not at the first image), the object model, detectron2 and the hand model."""
        from hp_ros.core.segmentation.detectron2 import Detectron2Backend
        from hp_ros.core.segmentation.image import COLOR_ENCODINGS, DEPTH_ENCODINGS
        self._color_encodings, self._depth_encodings = COLOR_ENCODINGS, DEPTH_ENCODINGS  # checked per message
        try:
            from hp_ros_msgs.msg import FingertipObservations, ObjectObservation
        except ImportError as e:
            raise ParameterError(f"hp_ros_msgs is not importable ({e})") from e
        self.ObjectObservation, self.FingertipObservations = ObjectObservation, FingertipObservations
        colors = [float(c) for c in p["marker_colors"]] if len(p["marker_colors"]) == 12 else []
        if len(p["marker_colors"]) not in (1, 12):
            raise ParameterError("marker_colors: need 12 numbers (4 RGB) or [0.0]")
        self.cfg = segmenter_config(p, colors, self._model_device(p["model_device"]))
        # the object model feeds the colour model (color_model: object), the size check and the
        # model backend
        self.uses_prior = "model" in p["object_backend"]
        self.object_model = load_object(p) if (p["color_model"] == "object" or p["object_size"] < 0
                                               or self.uses_prior) else None
        if "detectron2" not in p["object_backend"]:
            from hp_ros.core.segmentation.segmenter import Segmenter
            try:  # validate the settings now, not at the first image
                Segmenter(np.eye(3), 8, 8, None, self.cfg, object_model=self.object_model)
            except ValueError as e:
                raise ParameterError(str(e)) from e
        self.detectron2 = None
        if "detectron2" in p["object_backend"]:
            try:
                self.detectron2 = Detectron2Backend(p["detectron2_config"], p["detectron2_weights"])
            except (ImportError, ValueError) as e:
                raise ParameterError(str(e)) from e
        self.hand = load_hand(p)

    def _set_up_input_state(self, p: dict):
        """Joint-state and camera->hand buffers, the input queues, counters and the worker's lock."""
        self.mapper = self.hand.joint_state_mapper()
        self.stamps = stamp_detector(p)  # each stream's stamps against its own recent ones
        self.joints = JointStateBuffer(self.mapper, stamps=self.stamps)
        self.cam_hand = CameraToHand(self, p["camera_frame"], p["hand_base_frame"],
                                     camera_to_hand_from_param(p["camera_to_hand"]))
        self.bad = self.problems  # refused input, counted in /diagnostics (guard.ProblemLog)
        self.bridge = CvBridge() if CvBridge is not None else None
        self.segmenter = None
        self.info = None
        self.depth_queue = collections.deque(maxlen=max(8, int(p["image_queue_depth"]) + 2))
        self.mask_queue = collections.deque(maxlen=8)
        # colour images waiting for camera_info / depth / joints
        self.pending = collections.deque(maxlen=max(4, int(p["image_queue_depth"])))
        self._last_joint_wall = -1e9
        self._first_image_wall = None
        self._depth_seen = False  # a depth image has arrived (start-up: wait for the stream, see _inputs_ready)
        self.frames = 0
        self.frames_by_backend = {}  # object backend (object_backend or fallback_backend) -> frames segmented
        self.marker_frames = 0  # frames whose fingertip markers were looked for (see _fingertips_wanted)
        self.active_backend = p["object_backend"]
        self.skipped_behind = 0  # waiting images dropped for a newer one (latest_only)
        # The worker thread takes the colour images from their DDS reader (with a bus: a callback
        # stores them under self._cv and wakes it) and segments the frames whose inputs are
        # complete: the executor never waits behind a 10-15 ms segmentation, and a frame is
        # processed the moment its last input arrives (no polling period).
        self._cv = threading.Condition()
        self._running = True

    def _subscribe_inputs(self, p: dict, bus):
        """The colour image's subscription and the deferred readers of the other inputs."""
        from rclpy.event_handler import SubscriptionEventCallbacks
        lost = SubscriptionEventCallbacks(message_lost=lambda event: self._count_lost_images(event.total_count_change))
        frames_qos = QoSProfile(depth=int(p["image_queue_depth"]), reliability=IMAGE_QOS.reliability,
                                history=IMAGE_QOS.history)
        # over DDS the worker thread takes the colour images from their reader itself (an executor
        # wake per frame cost ~1 ms of CPU); with a bus (one process) they come by callback
        self.color_reader = None
        if bus is None:
            self.color_reader = DeferredReader(self, None, Image, CAMERA_TOPICS["color_image"],
                                               depth=int(p["image_queue_depth"]),
                                               reliable=frames_qos.reliability == ReliabilityPolicy.RELIABLE,
                                               count_lost=True)  # polled by publish_diagnostics
        else:
            subscribe(self, bus, Image, CAMERA_TOPICS["color_image"], self.on_image, frames_qos,
                      event_callbacks=lost)
        # camera_info, depth, joint states and the tracker's poses wait in their DDS readers until a
        # colour image or the worker needs them (hp_ros.nodes.deferred): the executor runs one
        # callback per frame (the colour image, which wakes the worker) instead of ~7
        self.info_reader = DeferredReader(self, bus, CameraInfo, CAMERA_TOPICS["color_info"], depth=2)
        self.depth_reader = None
        if p["use_depth"]:
            self.depth_reader = DeferredReader(self, bus, Image, CAMERA_TOPICS["depth_image"],
                                               depth=int(p["image_queue_depth"]))
        if p["external_mask_topic"]:
            subscribe(self, bus, Image, p["external_mask_topic"], self.on_external_mask, IMAGE_QOS)
        self.joint_reader = DeferredReader(self, bus, JointState, JOINT_STATES, depth=200)
        self.priors = collections.deque(maxlen=16)  # (stamp_ns, T_cam_obj (4, 4), position sigma [m])
        self.prior_reader = None
        if self.uses_prior:
            from geometry_msgs.msg import PoseWithCovarianceStamped
            self.prior_reader = DeferredReader(self, bus, PoseWithCovarianceStamped, TOPICS["object_pose"],
                                               depth=self.priors.maxlen)
        self.new_info = None

    # ------------------------------------------------------------------ inputs
    def on_external_mask(self, msg):
        with self._cv:
            self.mask_queue.append(msg)
            self._cv.notify()

    def on_prior(self, msg):
        """The tracker's pose (model backend prior); must be in the camera frame."""
        if msg.header.frame_id not in ("", self.p["camera_frame"]):
            self.bad.warn("prior_frame", f"object pose in frame {msg.header.frame_id!r} ignored: the model backend "
                          f"needs it in {self.p['camera_frame']!r}")
            return
        try:
            T = msgs.pose_to_matrix(msg)
            cov = msgs.covariance_from_msg(msg)
        except (ValueError, TypeError) as e:
            self.bad.warn("prior_data", f"object pose ignored: {e}")
            return
        if not (np.all(np.isfinite(T)) and np.all(np.isfinite(cov))):
            self.bad.warn("prior_nan", "object pose with NaN ignored")
            return
        sigma = float(np.sqrt(max(0.0, float(np.max(np.diag(cov)[:3])))))
        with self._cv:
            self.priors.append((msgs.header_stamp_ns(msg), T, sigma))

    def _model_device(self, spec: str) -> str:
        """The model backend's torch/Warp device: ``spec``, or the CPU (one error logged) when it asks
        for CUDA that is not usable here; the CPU when the model backend is not used."""
        if "model" not in self.p["object_backend"]:
            return "cpu"
        choice = resolve_device(spec)
        if choice.fallback:
            self.get_logger().error(f"model_device {spec!r} is not usable here ({choice.fallback}): the model "
                                    f"backend fits on the CPU")
        return str(choice.torch)

    def _prior_for(self, stamp_ns):
        """The newest tracker pose at or before ``stamp_ns`` within ``prior_max_age`` -> (T, sigma) or None."""
        for msg, _info in self.prior_reader.take():
            self.on_prior(msg)
        best = None
        with self._cv:
            priors = list(self.priors)
        for s, T, sigma in priors:
            if s <= stamp_ns + 1_000_000 and (best is None or s > best[0]):
                best = (s, T, sigma)
        if best is None or stamp_ns - best[0] > self.p["prior_max_age"] * 1e9:
            return None
        return best[1], best[2]

    def _update_segmenter(self):
        info, self.new_info = self.new_info, None
        if info is None:
            return
        if self.info is None or info.width != self.info.width or info.height != self.info.height \
                or not np.allclose(info.K, self.info.K):
            from hp_ros.core.segmentation.segmenter import Segmenter
            self.segmenter = Segmenter(info.K, info.width, info.height, self.hand, self.cfg, self.detectron2,
                                       object_model=self.object_model)
        self.info = info

    def _to_array(self, msg):
        if self.bridge is not None:
            return self.bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough")
        return msgs.image_to_numpy(msg)

    def _image_ok(self, msg, allowed, kind, info="current") -> bool:
        """Encoding accepted and size as camera_info says (``info``: the intrinsics to check
        against, default the current ones; None = no size check yet)."""
        info = self.info if info == "current" else info
        if msg.encoding not in allowed:
            self.bad.warn(f"{kind}_encoding", f"{kind} image with encoding {str(msg.encoding)[:40]!r} skipped: "
                          f"accepted {list(allowed)}", value=str(msg.encoding)[:40])
            return False
        try:
            check_image_size(msg.width, msg.height, kind)
            check_frame(msg.header.frame_id, self.p["camera_frame"], kind)
        except InvalidMessage as e:
            self.bad.reject(e, f"{kind}_size", f"{kind} image skipped: ")
            return False
        if info is not None and (msg.width, msg.height) != (info.width, info.height):
            self.bad.warn(f"{kind}_size", f"{kind} image {msg.width}x{msg.height} skipped: camera_info says "
                          f"{info.width}x{info.height}")
            return False
        return True

    def _count_lost_images(self, n: int) -> None:
        """``n`` colour images lost before they reached the node (the subscription's event with a bus;
        over DDS polled from the reader by the diagnostics timer)."""
        n = int(n)
        self.lost_images += n
        self.bad.warn("images_lost", f"{n} colour image(s) lost before reaching the node (it falls behind the stream)")

    def on_image(self, msg, info):
        # the driver publishes colour, camera_info and depth of one frame in any order: a colour
        # image waits (bounded) for its camera_info, its depth and the joint states around it
        with self._cv:
            self._take_inputs()  # the camera_info the size check needs
            # malformed images are turned away here (cheap header checks), so a burst of them
            # cannot push good frames out of the queue
            if not self._image_ok(msg, self._color_encodings, "colour", self.info or self.new_info) \
                    or not self._stamp_ok("colour", msgs.header_stamp_ns(msg)):
                return
            if len(self.pending) == self.pending.maxlen:
                self.bad.warn("queue_full", "colour image queue full while waiting for camera_info / depth / joint "
                              "states: the oldest image is dropped")
            if self._first_image_wall is None:
                self._first_image_wall = time.monotonic()
            # wall-clock ns of the stages (transport, executor queue, waiting for inputs, segmentation,
            # publishing), reported in /diagnostics as medians
            stages = {"sent": info["source_timestamp"], "received": info["received_timestamp"],
                      "callback": time.time_ns()}
            self.pending.append((msg, time.monotonic(), stages))
            self._cv.notify()

    def _work(self):
        """Worker thread: segment each colour image once its inputs are there (see _next_ready)."""
        reader = self.color_reader
        while self._running:
            if reader is not None:
                for msg, info in reader.take():
                    self.on_image(msg, info)
            with self._cv:
                job = self._next_ready()
                # input_wait deadlines pass without a message; an image waiting for its joint states
                # (taken from their reader, no callback wakes us) looks again soon
                timeout = 0.004 if self.pending else 0.05
                if job is None and reader is None:
                    self._cv.wait(timeout=timeout)
                    continue
            if job is None:
                reader.wait(timeout)  # a colour image (outside self._cv: the callbacks need it)
                continue
            try:
                self._process(*job)
            except ValueError as e:  # bad data the checks before could not see
                self.bad.warn("segment", f"image skipped: {e}")
            except Exception as e:  # noqa: BLE001 - one bad frame must not end segmentation
                if not self._running or not rclpy.ok(context=self.context):
                    return
                self.bad.warn("segment_error", f"image skipped: {type(e).__name__}: {e}")
            finally:
                self._worker_free_ns = time.time_ns()

    def destroy_node(self):
        self._running = False
        with self._cv:
            self._cv.notify_all()
        self._worker.join(timeout=2.0)
        return super().destroy_node()

    def _process(self, msg, dmsg, stages=None):
        """One frame: its inputs as arrays -> ``Segmenter.segment`` -> the outputs published (the
        stage stamps kept for /diagnostics)."""
        stages = dict(stages or {}, start=time.time_ns(), cpu_start=time.thread_time_ns())
        images = self._frame_arrays(msg, dmsg)
        if images is None:
            return
        stamp, rgb, depth, ext = images
        q, T = self._hand_state(stamp)
        res = self._segment(stamp, rgb, depth, q, T, ext)
        stages["segmented"], stages["cpu_end"] = time.time_ns(), time.thread_time_ns()
        self._publish_results(msg, stamp, rgb, res)
        self.frames += 1
        stages["published"] = time.time_ns()
        if "sent" in stages:
            self.stage_times.append(stages)

    def _frame_arrays(self, msg, dmsg):
        """``(stamp_ns, rgb (H, W, 3) uint8, depth (H, W) float32 m or None, external mask (H, W) or
        None)`` of a colour image, its depth image (``dmsg``, may be None) and the paired external
        mask; None when the colour image is refused."""
        from hp_ros.core.segmentation.image import COLOR_ENCODINGS, DEPTH_ENCODINGS, depth_to_metres, to_rgb
        if not self._image_ok(msg, COLOR_ENCODINGS, "colour"):
            return None
        stamp = msgs.header_stamp_ns(msg)
        try:
            rgb = to_rgb(self._to_array(msg), msg.encoding)
        except ValueError as e:
            self.bad.warn("colour_data", f"colour image skipped: {e}")
            return None
        depth = None
        if dmsg is None and self.p["use_depth"]:
            self.bad.warn("no_depth", f"no depth image with the stamp of colour image {stamp} ns: segmenting "
                                      "without depth")
        if dmsg is not None and self._image_ok(dmsg, DEPTH_ENCODINGS, "depth"):
            try:
                depth = depth_to_metres(self._to_array(dmsg), dmsg.encoding, self.p["depth_scale"])
            except ValueError as e:
                self.bad.warn("depth_data", f"depth image skipped: {e}")
        ext = None
        if self.p["external_mask_topic"]:
            with self._cv:
                mm = self._paired(self.mask_queue, stamp)
            if mm is not None and mm.encoding in ("mono8", "8UC1") and (mm.width, mm.height) == (msg.width, msg.height):
                ext = msgs.image_to_numpy(mm)
        return stamp, rgb, depth, ext

    def _hand_state(self, stamp: int):
        """``(q (J,) or None, T_cam_hand (4, 4) or None)`` at the image's stamp; a reset of the joint
        states (time went backwards) first forgets the alignment, last render and priors."""
        with self._cv:
            self._take_joints()
            reset = self.joints.reset_pending
            self.joints.reset_pending = False
            q = self.joints.at(stamp, max_gap_ns=int(self.p["joint_max_gap"] * 1e9))
        if reset:  # time went backwards (a looping bag): forget the alignment
            self.get_logger().info("time went backwards: camera->hand alignment reset")
            if self.segmenter.aligner is not None:
                self.segmenter.aligner.reset()
            self.segmenter._last_render = None
            self.priors.clear()
        T = self.cam_hand.at(stamp)  # interpolated at the image's stamp on a moving base (/tf)
        if T is None:
            self.bad.warn("no_tf", f"no camera->hand transform ({self.p['camera_frame']} -> "
                          f"{self.p['hand_base_frame']}) yet: publishing without a hand mask")
        elif q is None:
            with self._cv:
                latest = self.joints.latest()
            self.bad.warn("no_joints", "no joint states near this image's stamp "
                          f"({'none received' if latest is None else f'newest {(stamp - latest[0]) / 1e9:+.3f} s before'}): "
                          "publishing without a hand mask")
        return q, T

    def _segment(self, stamp: int, rgb, depth, q, T, ext):
        """``Segmenter.segment`` with the tracker's pose as prior (model backend); a switch between
        object_backend and its fallback logged once, frames counted per backend."""
        prior = self._prior_for(stamp) if self.uses_prior else None
        markers = self._fingertips_wanted()
        self.marker_frames += int(markers)
        if self.uses_prior and prior is None and not self.p["fallback_backend"]:
            self.bad.warn("no_prior", f"no object pose from the tracker within prior_max_age of this image: the "
                          f"model backend waits for {TOPICS['object_pose']}")
        res = self.segmenter.segment(rgb, depth, q if T is not None else None, T, ext,
                                     T_cam_obj_prior=None if prior is None else prior[0],
                                     prior_pos_sigma=None if prior is None else prior[1],
                                     markers=markers)
        if self.segmenter.active_backend != self.active_backend:  # model <-> fallback: one line per switch
            self.get_logger().info(f"object backend {self.active_backend!r} -> {self.segmenter.active_backend!r} "
                                   f"at stamp {stamp}" + ("" if prior is not None else
                                                          " (no tracker pose within prior_max_age)"))
            self.active_backend = self.segmenter.active_backend
        self.frames_by_backend[self.active_backend] = self.frames_by_backend.get(self.active_backend, 0) + 1
        return res



def main(args=None):
    # single-threaded executor: the callbacks only store messages; segmentation runs on the node's
    # worker thread (rclpy's EventsExecutor of Jazzy 7.1 was measured busy-looping at 100 % CPU idle)
    return run_node(SegmentationNode, "segmentation_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
