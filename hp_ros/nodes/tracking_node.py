"""tracking_node: the EKF tracker (hp_ros.core.ekf) between ROS messages.

In: /joint_states (control), camera_info, /hp_ros/object_observation, /hp_ros/fingertips,
/tf_static or the ``camera_to_hand`` parameter, /hp_ros/initial_pose, /hp_ros/refined_pose.
Out: /hp_ros/object_pose (PoseWithCovarianceStamped, EKF covariance), /tf (camera -> object),
/hp_ros/tracking_status, /diagnostics. Service /hp_ros/reset_tracking; client /hp_ros/refine_pose
(asked asynchronously when the track is LOST).

Frames: observations of one image share its header stamp. They are collected per stamp and the
frame is processed, in stamp order, once a joint state at or after its stamp has arrived and all
observation kinds seen recently have arrived (or a newer frame has), or at the latest
``pairing_timeout`` after its first observation: predict from the last
processed stamp to this one with the joint states interpolated at both stamps, then update with
each observation, then publish one pose for the frame. Messages older than the last processed
frame are dropped (counted); a stamp jumping back by more than 1 s (looping bag, restarted
driver) resets the tracker to INITIALIZING and re-arms the initial pose.
"""
from __future__ import annotations

from hp_ros.nodes import exit_quietly_while_loading

exit_quietly_while_loading(__name__)  # before the imports below: they take seconds

import bisect
import collections
import math
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from hp_ros_msgs.msg import FingertipObservations, ObjectObservation, TrackingStatus
from hp_ros_msgs.srv import RefinePose
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, JointState
from std_srvs.srv import Trigger

from hp_ros import graph
from hp_ros.core.ekf import EKFConfig, EKFTracker, TrackState
from hp_ros.io import msgs
from hp_ros.nodes.buffers import JointStateBuffer
from hp_ros.nodes.calibration import CameraToHand
from hp_ros.nodes.diagnostics import diagnostics_message, stage_medians_ms
from hp_ros.nodes.loaders import camera_to_hand_from_param, load_hand, load_object
from hp_ros.nodes.local_bus import publisher, subscribe
from hp_ros.nodes.logs import OnceLogger
from hp_ros.nodes.params import COMMON_PARAMS, declare_parameters, length_in, non_negative, one_of, Param, positive
from hp_ros.nodes.process import run_node
from hp_ros.nodes.qos import OUTPUT_QOS, STATE_QOS

_D = EKFConfig()
# stages of a frame in this node (wall-clock): camera_info delivery, executor queue, waiting for
# the frame's observations and joint states (at most pairing_timeout), filter + publishing
TRACKER_STAGES = (("transport", "sent", "received"), ("executor", "received", "callback"),
                  ("wait_observations", "callback", "start"), ("filter_publish", "start", "published"))
OWN_PARAMS = {
    "initial_pose": Param([0.0], "initial object pose in the camera frame [x y z qx qy qz qw]; [0.0] = wait for "
                                 "/hp_ros/initial_pose or a refinement result", length_in(1, 7)),
    "estimate_calibration": Param(_D.estimate_calibration, "estimate a camera->hand correction (needed for fingertips)"),
    "use_fingertips": Param(True, "update with /hp_ros/fingertips"),
    "use_object_center": Param(True, "update with /hp_ros/object_observation (centroid + median depth)"),
    "use_object_pose": Param(True, "update with the model backend's depth fit in /hp_ros/object_observation (pose "
                             "with its ICP covariance; only published with object_backend model)"),
    "depth_min_confidence": Param(_D.depth_min_confidence, "ignore depth fits with a lower depth agreement",
                                  non_negative),
    "depth_pos_sigma": Param(_D.depth_pos_sigma, "white noise floor [m] per axis of the depth fit, added to its ICP "
                             "covariance (default measured on synthetic depth: raise it for a real camera)", non_negative),
    "depth_rot_sigma": Param(_D.depth_rot_sigma, "white noise floor [rad] per axis of the depth fit's rotation",
                             non_negative),
    "project_penetration": Param(True, "publish the estimate moved out of penetration after each frame's updates "
                                 "(no hand point deeper than penetration_tolerance inside the object; the covariance "
                                 "grows by the move; the filter state is not changed)"),
    "penetration_tolerance": Param(_D.penetration_tolerance, "hand points deeper than this [m] inside the object "
                                   "are pushed out", positive),
    "contact_threshold": Param(_D.contact_threshold, "hand point within this distance [m] of the object = contact", positive),
    "out_of_contact": Param(_D.out_of_contact, "motion without contacts", one_of("hold", "constant_velocity")),
    "fingertip_px_sigma": Param(_D.fingertip_px_sigma, "fingertip observation noise [px]", positive),
    "fingertip_offset": Param(_D.fingertip_offset, "observed tip point along the fingertip link z axis [m]"),
    "calib_pos_sigma": Param(_D.calib_pos_sigma, "std. dev. [m] per axis of the camera->hand calibration error", positive),
    "calib_rot_sigma": Param(_D.calib_rot_sigma, "std. dev. [rad] per axis of the camera->hand calibration error", positive),
    "center_px_sigma": Param(_D.center_px_sigma, "object centroid noise [px]", positive),
    "center_depth_sigma": Param(_D.center_depth_sigma, "object median depth noise [m]", positive),
    "center_bias_px_sigma": Param(_D.center_bias_px_sigma, "least std. dev. [px] of the centroid's slowly varying "
                                  "bias (occlusion, mask edges; estimated as a state)", non_negative),
    "center_bias_depth_sigma": Param(_D.center_bias_depth_sigma, "least std. dev. [m] of the median depth's slowly "
                                     "varying bias", non_negative),
    "gate_probability": Param(_D.gate_probability, "chi-square probability of the NIS gate",
                              lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}"),
    "lost_after_rejections": Param(_D.lost_after_rejections, "consecutive rejected object observations -> LOST "
                                                              "(fingertip updates do not count)", positive),
    "max_covariance_trace": Param(_D.max_covariance_trace, "pose covariance trace [m^2+rad^2] above which -> LOST", positive),
    "min_confidence": Param(0.3, "ignore observations with a lower confidence", non_negative),
    "pairing_timeout": Param(0.001, "latency budget [s]: a frame is processed (and its pose published) at the "
                                   "latest this long after the tracker first heard of it (its camera_info or an "
                                   "observation), normally earlier: once its observations and the joint states "
                                   "after it arrived; observations arriving later are applied afterwards",
                             positive),
    "pose_every_frame": Param(True, "publish a pose for every camera frame (its camera_info stamp): predicted from "
                                    "the joint states when the frame's observations are late or missing (status "
                                    "'predicted')"),
    "reprocess_window": Param(1.0, "an observation up to this much [s] older than the newest processed frame is "
                                   "still applied: the filter returns to its frame and re-predicts the frames after "
                                   "it (0 = late observations are dropped)", non_negative),
    "max_joint_gap": Param(0.1, "max distance [s] from an image stamp to the joint states around it", positive),
    "publish_on_joint_states": Param(False, "also publish a predicted pose for every joint state"),
    "publish_when_lost": Param(False, "keep publishing pose and TF while the track is LOST (default: status only, "
                                      "so a manipulation pipeline never acts on a pose the filter disowned)"),
    "request_refinement": Param(True, "when LOST, ask /hp_ros/refine_pose (if available) and re-initialise"),
    "refinement_timeout": Param(20.0, "give up on a refine_pose call after this long [s] and ask again", positive),
    "min_refinement_iou": Param(0.7, "a refinement answer re-initialises the tracker only when its mask IoU "
                                     "reaches this (else the node asks again)", non_negative),
}


def _sec_pose_cov(cov: np.ndarray) -> tuple:
    d = np.sqrt(np.clip(np.diag(cov), 0, None))
    return float(d[:3].mean()), float(d[3:].mean())


class TrackingNode(Node):
    def __init__(self, bus=None):
        super().__init__("tracking_node")
        self.bus = bus  # LocalBus when the graph runs in one process (hp_ros.nodes.graph_process)
        p = declare_parameters(self, {**COMMON_PARAMS, **OWN_PARAMS})
        self.p = p
        self.cfg = EKFConfig.from_dict({k: p[k] for k in OWN_PARAMS if k in EKFConfig.__dataclass_fields__})
        self.hand = load_hand(p)
        self.obj = load_object(p)
        from hp_ros.core.sdf import MeshSDF

        self.sdf = MeshSDF(self.obj.vertices, self.obj.faces)
        self._warm_up()
        self.errors = OnceLogger(self)
        # joint states of the last refinement_timeout (+ margin) at 100 Hz: a refinement answer for a
        # frame seconds old re-initialises there and re-predicts through them (4 s were not enough)
        self.joints = JointStateBuffer(self.hand.joint_state_mapper(),
                                       capacity=max(400, int(150 * (p["refinement_timeout"] + 2.0))))
        self.calib = CameraToHand(self, p["camera_frame"], p["hand_base_frame"], camera_to_hand_from_param(p["camera_to_hand"]))
        self.ekf: EKFTracker | None = None
        self.K = None
        self.pending_init = self._param_initial_pose()  # (T, covariance or None[, stamp_ns])
        self.frames: dict = {}       # stamp_ns -> {"object": msg, "fingertips": msg, "t_first": wall}
        self.kinds_seen: dict = {}   # kind -> wall time last seen
        self.last_stamp: int | None = None
        self.last_q = None
        self.last_center = None      # (stamp_ns, u, v, depth) of the latest usable object observation
        self.last_joint_wall = -math.inf  # monotonic time of the last joint state received
        self.stage_times = collections.deque(maxlen=300)  # per-frame wall-clock ns stamps, see on_camera_info
        self.history: list = []      # processed frames of the last reprocess_window, see _reprocess_late
        self.late_obs: dict = {}     # stamp -> {kind: msg} of observations of processed frames, not applied yet
        self.counts = {"frames": 0, "predicted": 0, "late": 0, "reprocessed": 0, "resets": 0,
                       "updates_accepted": 0, "updates_rejected": 0, "refine_requests": 0}
        self.last_status = None
        self.refine_future = None
        self.refine_started = 0.0

        self.pose_pub = publisher(self, bus, PoseWithCovarianceStamped, graph.TOPICS["object_pose"], OUTPUT_QOS)
        self.status_pub = publisher(self, bus, TrackingStatus, graph.TOPICS["tracking_status"], OUTPUT_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        from hp_ros.nodes.tf_out import TfPublisher

        self.tf = TfPublisher(self)
        subscribe(self, bus, JointState, graph.JOINT_STATES, self.on_joint_state, STATE_QOS)
        subscribe(self, bus, CameraInfo, graph.CAMERA_TOPICS["color_info"], self.on_camera_info, OUTPUT_QOS)
        subscribe(self, bus, ObjectObservation, graph.TOPICS["object_observation"],
                                 lambda m: self.on_observation("object", m), STATE_QOS)
        subscribe(self, bus, FingertipObservations, graph.TOPICS["fingertips"],
                                 lambda m: self.on_observation("fingertips", m), STATE_QOS)
        subscribe(self, bus, PoseStamped, graph.TOPICS["initial_pose"], self.on_initial_pose, OUTPUT_QOS)
        subscribe(self, bus, PoseWithCovarianceStamped, graph.TOPICS["refined_pose"], self.on_refined_pose, OUTPUT_QOS)
        self.create_service(Trigger, graph.SERVICES["reset_tracking"], self.on_reset)
        self.refine_client = self.create_client(RefinePose, graph.SERVICES["refine_pose"])
        self.create_timer(0.01, self.on_timer)
        self.create_timer(1.0, self.publish_diagnostics)
        self.get_logger().info(f"tracking {self.obj.name} (tf via {self.tf.backend}, "
                               f"calibration {'estimated' if self.cfg.estimate_calibration else 'fixed'})")

    def _warm_up(self) -> None:
        """Compile/load the Warp SDF kernels and run the hand FK once before subscribing: the first
        query takes seconds, and a node that stalls on its first frame overflows its input queues
        (observed: a 3 s bag replayed while the first frame compiled -> ~8 poses out of 91)."""
        import torch

        with torch.no_grad():
            self.sdf.query(torch.zeros(1, 1, 3, dtype=torch.float32))
            self.hand.surface_points(self.hand.zero_q())

    # ------------------------------------------------------------------ inputs
    def _param_initial_pose(self):
        v = self.p["initial_pose"]
        if len(v) != 7:
            return None
        from hp_ros.nodes.loaders import camera_to_hand_from_param as as_pose  # same [x y z q] layout

        return as_pose(v), None

    def on_camera_info(self, msg, info) -> None:
        try:
            self.K = msgs.camera_info_to_intrinsics(msg).K
            if self.ekf is not None:
                self.ekf.set_camera(self.K)
        except ValueError as e:
            self.errors.warn("camera_info", f"camera_info ignored: {e}")
            return
        # every camera frame gets a pose: the frame is known from its camera_info (small, sent next
        # to each image), whether or not the segmentation keeps up with it
        stamp = msgs.header_stamp_ns(msg)
        if self.p["pose_every_frame"] and (self.last_stamp is None or stamp > self.last_stamp):
            frame = self.frames.setdefault(stamp, {"t_first": time.monotonic()})
            frame["stages"] = {"sent": info["source_timestamp"], "received": info["received_timestamp"],
                               "callback": time.time_ns()}
            self.drain_frames()

    def on_joint_state(self, msg) -> None:
        try:
            added = self.joints.add(msg)
        except ValueError as e:
            self.errors.warn("joint_state", f"joint state ignored: {e}")
            return
        if self.joints.reset_pending:
            self.joints.reset_pending = False
            self.reset("time went backwards in /joint_states")
            return
        self.last_joint_wall = time.monotonic()
        if added and self.frames:
            self.drain_frames()
        if added and self.p["publish_on_joint_states"] and self.ekf is not None and self.ekf.initialized:
            stamp, _ = self.joints.latest()
            if self.last_stamp is not None and stamp > self.last_stamp:
                if self.late_obs:
                    self._reprocess_late()
                self.process_frame(stamp, {})

    def on_observation(self, kind: str, msg) -> None:
        stamp = msgs.header_stamp_ns(msg)
        if self.last_stamp is not None and stamp < self.last_stamp - 1_000_000_000:
            self.reset("time went backwards in the observations")
        if kind == "object" and msg.valid and not (math.isfinite(msg.centroid_u) and math.isfinite(msg.centroid_v)):
            self.errors.warn("nan_object", "object observation with a non-finite centroid ignored")
            return
        if self.last_stamp is not None and stamp <= self.last_stamp:
            # applied by the next drain (before a newer frame is processed, at the latest by the
            # 10 ms timer): the object and fingertip observations of a frame then cost one
            # reprocess pass instead of one each, and a backlog one pass instead of one per frame
            self.late_obs.setdefault(stamp, {})[kind] = msg
            return
        now = time.monotonic()
        self.kinds_seen[kind] = now
        self.frames.setdefault(stamp, {"t_first": now})[kind] = msg
        self.drain_frames()

    def drain_frames(self) -> None:
        """Process pending frames in stamp order. A frame is ready when the joint states cover its
        stamp (a joint state at or after it has arrived: topics arrive independently) and it has
        every observation kind seen recently; after ``pairing_timeout`` it is processed with what it
        has (without joint states only when none arrived for 0.5 s)."""
        if self.late_obs:
            self._reprocess_late()
        now = time.monotonic()
        if self.calib.T_cam_hand is None:
            # /tf_static (transient local) can reach a node a second after the first frames: keep
            # them (bounded) instead of dropping them, they are processed once it is there
            old = [s for s, f in self.frames.items() if now - f["t_first"] > 2.0]
            for s in old:
                del self.frames[s]
            if old:
                self.errors.warn("no_calibration", "no camera->hand transform yet (parameter camera_to_hand or "
                                                   "/tf_static): frames older than 2 s dropped")
            return
        expected = {k for k, t in self.kinds_seen.items() if now - t < 1.0}
        newest = self.joints.latest()
        stamps = sorted(self.frames)
        for s in stamps:
            frame = self.frames[s]
            joints_ready = newest is not None and newest[0] >= s
            complete = bool(expected) and expected <= set(frame)
            # wait for joint states while they keep coming (a busy executor lags behind its queue)
            # (DDS delivers in bursts under load: a frame skipped for want of joint states is a
            # frame without a pose, so they count as stopped only after 0.5 s without any)
            joints_stalled = now - self.last_joint_wall >= max(0.5, self.p["max_joint_gap"])
            timed_out = now - frame["t_first"] >= self.p["pairing_timeout"] and (joints_ready or joints_stalled)
            if (joints_ready and complete) or timed_out:
                frame = self.frames.pop(s)
                stages = frame.get("stages")
                if stages is not None:
                    stages["start"] = time.time_ns()
                self.process_frame(s, frame)
                if stages is not None:
                    stages["published"] = time.time_ns()
                    self.stage_times.append(stages)
            else:
                break  # keep the frames in order

    def on_timer(self) -> None:
        self.drain_frames()
        if self.refine_future is not None and not self.refine_future.done() \
                and time.monotonic() - self.refine_started > self.p["refinement_timeout"]:
            self.refine_future.cancel()
            self.refine_future = None
            self.errors.warn("refine_timeout", f"refine_pose gave no answer within {self.p['refinement_timeout']} s: "
                                               "asking again")
        if self.refine_future is not None and self.refine_future.done():
            fut, self.refine_future = self.refine_future, None
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - a failed service call must not stop tracking
                self.errors.warn("refine", f"refine_pose call failed: {e}")
                return
            if res is None or not res.success:
                self.errors.warn("refine_failed", f"refine_pose failed: {getattr(res, 'message', 'no answer')}")
            elif not res.mask_iou >= self.p["min_refinement_iou"]:
                self.errors.warn("refine_iou", f"refinement result not used: mask IoU {res.mask_iou:.2f} < "
                                               f"min_refinement_iou {self.p['min_refinement_iou']}")
            elif self.ekf is not None and self.ekf.state == TrackState.LOST:
                # at the refined frame's stamp: the filter re-predicts from there with the joint
                # states since (the object moved while the refinement ran)
                self.pending_init = (msgs.pose_to_matrix(res.pose), msgs.covariance_from_msg(res.pose),
                                     msgs.header_stamp_ns(res.pose))
                self.get_logger().info(f"re-initialising from the refinement result (mask IoU {res.mask_iou:.2f})")

    def on_initial_pose(self, msg) -> None:
        try:
            self.pending_init = (msgs.pose_to_matrix(msg), None)
        except (ValueError, TypeError) as e:
            self.errors.warn("initial_pose", f"initial pose ignored: {e}")

    def on_refined_pose(self, msg) -> None:
        """A refinement result (ours, or one a user asked for): re-initialises a tracker that is not
        TRACKING, at the refined frame's stamp (the answer to our own request arrives here too, and
        usually before the service response: both carry the same pose and stamp)."""
        if self.ekf is not None and self.ekf.state == TrackState.TRACKING:
            return
        try:
            self.pending_init = (msgs.pose_to_matrix(msg), msgs.covariance_from_msg(msg), msgs.header_stamp_ns(msg))
        except (ValueError, TypeError) as e:
            self.errors.warn("refined_pose", f"refined pose ignored: {e}")
            return
        self.get_logger().info(f"re-initialising from the refinement result on {graph.TOPICS['refined_pose']} "
                               f"(stamp {self.pending_init[2]})")

    def on_reset(self, request, response):
        self.reset("reset service")
        response.success = True
        response.message = "tracker reset" + (" (initial pose re-armed from the parameter)" if self.pending_init else "")
        return response

    def reset(self, why: str) -> None:
        self.counts["resets"] += 1
        self.get_logger().info(f"reset: {why}")
        if self.ekf is not None:
            before = self.ekf.state
            self.ekf.reset()
            self._transition(before, self.last_stamp or 0, f"reset: {why}")
        self.frames.clear()
        self.history.clear()
        self.late_obs.clear()
        self.last_stamp = None
        self.last_q = None
        self.pending_init = self._param_initial_pose() or self.pending_init

    # ------------------------------------------------------------------ processing
    def _ensure_tracker(self) -> bool:
        T_ch = self.calib.T_cam_hand
        if T_ch is None:
            self.errors.warn("no_calibration", "no camera->hand transform yet (parameter camera_to_hand or /tf_static)")
            return False
        if self.ekf is None:
            self.ekf = EKFTracker(self.hand, self.obj, self.K, T_ch, self.cfg, object_sdf=self.sdf)
        elif not np.allclose(T_ch, self.ekf.T_cam_hand_pub):
            self.ekf.set_calibration(T_ch)
        return True

    def process_frame(self, stamp: int, frame: dict) -> None:
        if not self._ensure_tracker():
            return
        ekf = self.ekf
        q = self.joints.at(stamp, int(self.p["max_joint_gap"] * 1e9))
        if q is None:
            self.errors.warn("no_joints", "no joint states around the observation stamp: frame skipped")
            return
        state_before = ekf.state
        if self.pending_init is not None:
            T, cov, *when = self.pending_init
            self.pending_init = None
            # a pose of an earlier frame (a refinement result) starts there, when its joint states
            # are still buffered, and is predicted forward below
            t_init = when[0] if when and when[0] < stamp else stamp
            q_init = self.joints.at(t_init, int(self.p["max_joint_gap"] * 1e9)) if t_init != stamp else q
            if q_init is None:
                self.errors.warn("init_joints", "the initial pose's stamp is older than the buffered joint states: "
                                                "initialised at the current frame instead")
                t_init, q_init = stamp, q
            if cov is not None and np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0):
                ps, rs = _sec_pose_cov(cov)
                ekf.initialize(T, q=q_init, pos_sigma=ps, rot_sigma=rs)
            else:
                ekf.initialize(T, q=q_init)
            self.last_stamp, self.last_q = t_init, q_init
            self.history.clear()  # nothing before an initialisation is reprocessed
            self._transition(state_before, stamp, f"initialised at stamp {t_init}")
            state_before = ekf.state
        elif not ekf.initialized:
            self.publish_status(stamp, None)
            return
        self._predict_to(stamp, q)
        rec = {"stamp": stamp, "q": q, "snap": ekf.snapshot(),
               "obs": {k: frame[k] for k in ("object", "fingertips") if k in frame}}
        applied = self._apply_observations(stamp, rec["obs"], count=True)
        if self.p["reprocess_window"] > 0:
            self.history.append(rec)
            horizon = stamp - int(self.p["reprocess_window"] * 1e9)
            while self.history and self.history[0]["stamp"] < horizon:
                self.history.pop(0)
        self.counts["frames"] += 1
        self.counts["predicted"] += 0 if applied else 1
        self._transition(state_before, stamp, ekf.message)
        self.publish(stamp, predicted=not applied)
        if ekf.state == TrackState.LOST:
            self.request_refinement(stamp)

    def _predict_to(self, stamp: int, q) -> None:
        """Predict from ``last_stamp`` through every buffered joint state before ``stamp`` to ``stamp``."""
        ekf = self.ekf
        if self.last_stamp is None or self.last_stamp >= stamp:
            return
        stamps = self.joints.stamps
        i = bisect.bisect_right(stamps, self.last_stamp)
        j = bisect.bisect_left(stamps, stamp)
        for s, qj in zip(stamps[i:j], self.joints.values[i:j]):
            ekf.predict(qj, (s - self.last_stamp) * 1e-9)
            self.last_stamp = s
        ekf.predict(q, max((stamp - self.last_stamp) * 1e-9, 0.0))
        self.last_stamp, self.last_q = stamp, q

    def _apply_observations(self, stamp: int, obs: dict, count: bool) -> bool:
        """Update with the frame's object / fingertip observations; True when one was applied."""
        ekf = self.ekf
        if self.K is not None:
            ekf.set_camera(self.K)
        results = []
        obj_msg = obs.get("object")
        fitted = False
        if obj_msg is not None and self.p["use_object_pose"] and getattr(obj_msg, "has_pose", False):
            T_fit = msgs.pose_to_matrix(obj_msg.pose)
            cov = np.asarray(obj_msg.pose_covariance, dtype=np.float64).reshape(6, 6)
            r = ekf.update_depth_pose(T_fit, cov, obj_msg.pose_confidence)
            if r.accepted or r.reason == "gated":  # a low-confidence fit is no observation
                results.append(r)
            fitted = r.accepted
        if obj_msg is not None and obj_msg.valid and obj_msg.confidence >= self.p["min_confidence"]:
            self.last_center = (stamp, obj_msg.centroid_u, obj_msg.centroid_v, obj_msg.median_depth)
            # after an accepted depth fit the centre (same depth pixels) is no new information
            if self.p["use_object_center"] and not fitted:
                results.append(ekf.update_center(obj_msg.centroid_u, obj_msg.centroid_v, obj_msg.median_depth))
        tips_msg = obs.get("fingertips")
        if tips_msg is not None and self.p["use_fingertips"]:
            uv = np.full((4, 2), np.nan)
            for name, u, v, c in zip(tips_msg.names, tips_msg.u, tips_msg.v, tips_msg.confidence):
                if name in self.hand.fingertip_links and c >= self.p["min_confidence"]:
                    uv[self.hand.fingertip_links.index(name)] = (u, v)
                elif name not in self.hand.fingertip_links:
                    self.errors.warn("tip_name", f"unknown fingertip name {name!r} ignored")
            if np.any(np.all(np.isfinite(uv), axis=1)):
                results.append(ekf.update_fingertips_2d(uv))
        if self.p["project_penetration"]:
            ekf.project_out_of_penetration()
        if count:
            for r in results:
                self.counts["updates_accepted" if r.accepted else "updates_rejected"] += 1
        return any(r.accepted for r in results)

    def _reprocess_late(self) -> None:
        """Observations of already processed frames (they arrived after the frame's latency budget):
        return the filter to the oldest such frame, add them, and re-predict and re-update the frames
        after it, in one pass. Poses already published stay as they were; the next one includes them.
        An observation of a frame no longer in the history (older than ``reprocess_window``), or of a
        kind the frame already has, counts as ``late``."""
        late, self.late_obs = self.late_obs, {}
        idx = None
        for stamp, obs in sorted(late.items()):
            i = next((i for i, r in enumerate(self.history) if r["stamp"] == stamp), None)
            for kind, msg in obs.items():
                if i is None or self.ekf is None or kind in self.history[i]["obs"]:
                    self.counts["late"] += 1
                    continue
                self.history[i]["obs"][kind] = msg
                idx = i if idx is None else min(idx, i)
        if idx is None:
            return
        state_before = self.ekf.state
        last_stamp, last_q = self.last_stamp, self.last_q
        for k, rec in enumerate(self.history[idx:]):
            if k > 0:
                self._predict_to(rec["stamp"], rec["q"])
                rec["snap"] = self.ekf.snapshot()
            else:
                self.ekf.restore(rec["snap"])
                self.last_stamp, self.last_q = rec["stamp"], rec["q"]
            self._apply_observations(rec["stamp"], rec["obs"], count=rec["stamp"] in late)
        self.last_stamp, self.last_q = last_stamp, last_q
        self.counts["reprocessed"] += 1
        self._transition(state_before, self.history[idx]["stamp"], self.ekf.message)

    def _transition(self, before: int, stamp: int, reason: str) -> None:
        """Log every state change at INFO as one timeline line (state, stamp, reason)."""
        after = self.ekf.state if self.ekf is not None else TrackState.INITIALIZING
        if after != before:
            self.get_logger().info(f"state {TrackState.NAMES[before]} -> {TrackState.NAMES[after]} at stamp "
                                   f"{stamp}: {reason}")

    def request_refinement(self, stamp: int) -> None:
        if (not self.p["request_refinement"] or self.refine_future is not None
                or not self.refine_client.service_is_ready()):
            return
        req = RefinePose.Request()
        req.stamp = msgs.ns_to_stamp(stamp, type(req.stamp))
        req.use_initial_pose = True
        # a lost estimate can be beyond the refinement's reach: start it re-centred on the latest
        # object observation of this frame (rotation kept)
        T0 = self.ekf.T_cam_obj
        if self.last_center is not None and self.last_center[0] == stamp:
            try:
                T0 = self.ekf.recentred_pose(*self.last_center[1:])
            except ValueError:
                pass  # no depth in the observation: the estimate as it is
        req.initial_pose = msgs.make_pose_stamped(T0, stamp, self.p["camera_frame"], PoseStamped)
        self.refine_future = self.refine_client.call_async(req)
        self.refine_started = time.monotonic()
        self.counts["refine_requests"] += 1

    # ------------------------------------------------------------------ outputs
    def publish(self, stamp: int, predicted: bool = False) -> None:
        ekf = self.ekf
        if ekf.state == TrackState.LOST and not self.p["publish_when_lost"]:
            self.publish_status(stamp, ekf, predicted)
            return
        cam = self.p["camera_frame"]
        # the pose moved out of penetration when project_penetration (else the estimate itself)
        T, cov = ekf.T_cam_obj_published, ekf.covariance_published
        self.pose_pub.publish(msgs.make_pose_with_covariance_stamped(T, cov, stamp, cam, PoseWithCovarianceStamped))
        self.tf.send(msgs.make_transform_stamped(T, stamp, cam, self.p["object_frame"], TransformStamped))
        self.publish_status(stamp, ekf, predicted)

    def publish_status(self, stamp: int, ekf, predicted: bool = False) -> None:
        st = TrackingStatus()
        st.header = msgs.make_header(type(st.header), stamp, self.p["camera_frame"])
        state = TrackState.INITIALIZING if ekf is None else ekf.state
        st.state = state
        st.state_name = TrackState.NAMES[state]
        st.nis = float(ekf.last_nis) if ekf is not None else float("nan")
        st.nis_gate = float(ekf.last_gate) if ekf is not None else float("nan")
        st.rejected_updates = int(ekf.rejections) if ekf is not None else 0
        st.contact_count = int(ekf.contact_count) if ekf is not None else 0
        st.covariance_trace = float(ekf.covariance_trace) if ekf is not None else float("nan")
        st.latency_ms = (self.get_clock().now().nanoseconds - stamp) * 1e-6
        st.predicted = bool(predicted)
        st.message = ekf.message if ekf is not None else "waiting for an initial pose"
        self.status_pub.publish(st)
        self.last_status = st

    def publish_diagnostics(self) -> None:
        st = self.last_status
        if st is None or st.state == TrackState.INITIALIZING:
            level, message = DiagnosticStatus.WARN, "initialising"
        elif st.state == TrackState.LOST:
            level, message = DiagnosticStatus.ERROR, f"lost: {st.message}"
        else:
            level, message = DiagnosticStatus.OK, "tracking"
        vals = dict(self.counts)
        vals.update(stage_medians_ms(list(self.stage_times), TRACKER_STAGES))
        vals.update({f"input_errors.{k}": v for k, v in self.errors.counts.items()})
        if st is not None:
            vals.update(nis=st.nis, covariance_trace=st.covariance_trace, contacts=st.contact_count,
                        latency_ms=round(st.latency_ms, 2))
        self.diag_pub.publish(diagnostics_message(self, "hp_ros: tracking_node", level, message, vals,
                                                  hardware_id=self.p["object_frame"]))


def main(args=None):
    return run_node(TrackingNode, "tracking_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
