"""tracking_node: the frame tracker (hp_ros.core.ekf.FrameTracker) between ROS messages.

In: /joint_states (control), camera_info, /hp_ros/object_observation, /hp_ros/fingertips,
/tf_static or the ``camera_to_hand`` parameter, /hp_ros/initial_pose, /hp_ros/refined_pose.
Out: /hp_ros/object_pose (PoseWithCovarianceStamped, EKF covariance), /tf (camera -> object),
/hp_ros/tracking_status, /diagnostics. Service /hp_ros/reset_tracking; client /hp_ros/refine_pose
(asked asynchronously when the track is LOST).

The per-frame logic - pairing observations with frames by stamp, late observations, the update
order, the penetration projection, LOST and re-initialisation - is the core's
:class:`~hp_ros.core.ekf.FrameTracker` (see its module doc). This node turns messages into its
typed inputs (:mod:`hp_ros.io.observations`; stamps checked by :mod:`hp_ros.nodes.tracking_inputs`),
runs it when a camera_info arrives and on a 10 ms timer (steady clock) while anything is pending,
and publishes each processed frame's result (:mod:`hp_ros.nodes.tracking_outputs`).
Joint states and observations have no callback: they wait in DDS readers
(:class:`~hp_ros.nodes.deferred.DeferredReader`) and each run of the tracker takes all that arrived
as one batch (without pending frames at least every 0.5 s). A new frame's camera_info callback
waits on those readers alone (at most 20 ms) for the joint states to reach its stamp and for its
pairing_timeout, and poses it there; what waits longer goes to the timer. A frame's observations
usually come after its pose went out (predicted) and are applied at the next run, before the
next frame is posed. (With ``pose_every_frame`` false an observation makes a frame: then
observations are subscriptions that run the tracker.)
"""
from __future__ import annotations

from hp_ros.nodes import exit_quietly_while_loading

exit_quietly_while_loading(__name__)  # before the imports below: they take seconds

import functools
import time

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from hp_ros_msgs.msg import FingertipObservations, ObjectObservation
from rclpy.clock import Clock, ClockType
from sensor_msgs.msg import CameraInfo, JointState
from std_srvs.srv import Trigger

from hp_ros import graph
from hp_ros.core.ekf import EKFConfig, FrameTracker, FrameTrackerConfig
from hp_ros.core.sdf import MeshSDF
from hp_ros.io import msgs, validate
from hp_ros.io.observations import fingertips_from_msg, object_observation_from_msg
from hp_ros.nodes.buffers import joint_state_arrays
from hp_ros.nodes.calibration import CameraToHand
from hp_ros.nodes.deferred import DeferredReader
from hp_ros.nodes.loaders import camera_to_hand_from_param, load_hand, load_object, warm_up
from hp_ros.nodes.local_bus import subscribe
from hp_ros.nodes.guard import GuardedNode
from hp_ros.nodes.params import COMMON_PARAMS, declare_parameters
from hp_ros.nodes.process import run_node
from hp_ros.nodes.qos import OUTPUT_QOS, STATE_QOS
from hp_ros.nodes.refine_client import RefinementClient
from hp_ros.nodes.tracking_inputs import InputChecks
from hp_ros.nodes.tracking_outputs import FrameOutputs
from hp_ros.nodes.tracking_params import OWN_PARAMS

JOINTS_IDLE = 0.5  # [s] joint states are taken at least this often
JOINT_READER_DEPTH = 200  # joint states the DDS reader keeps between two takes (2 s at 100 Hz)
JOINT_WAIT = 0.02  # [s] a frame's camera_info callback waits at most this long for its inputs (_await_frame)
OBS_READER_DEPTH = 60  # observations of each kind kept between two takes (2 s at 30 Hz)
FROM_MSG = {"object": object_observation_from_msg, "fingertips": fingertips_from_msg}
# inputs read only while the filter uses them (_follow_inputs_in_use): kind -> message type
OPTIONAL_INPUTS = {"fingertips": FingertipObservations, "hand_alignment": TransformStamped}


class TrackingNode(GuardedNode):
    def __init__(self, bus=None):
        super().__init__("tracking_node")
        self.bus = bus  # LocalBus when the graph runs in one process (hp_ros.nodes.graph_process)
        p = self.p = declare_parameters(self, {**COMMON_PARAMS, **OWN_PARAMS})
        self.cfg = EKFConfig.from_dict({k: p[k] for k in OWN_PARAMS if k in EKFConfig.__dataclass_fields__})
        self.hand, self.obj = load_hand(p), load_object(p)
        self.sdf = MeshSDF(self.obj.vertices, self.obj.faces)
        warm_up(self.sdf, self.hand)  # before subscribing: the first query compiles for seconds
        self.errors = self.problems  # refused input, counted in /diagnostics (guard.ProblemLog)
        self.calib = CameraToHand(self, p["camera_frame"], p["hand_base_frame"], camera_to_hand_from_param(p["camera_to_hand"]))
        # joint states of the last refinement_timeout (+ margin) at 100 Hz: a refinement answer for a
        # frame seconds old re-initialises there and re-predicts through them (4 s were not enough)
        capacity = max(400, int(150 * (p["refinement_timeout"] + 2.0)))
        self.tracker = FrameTracker(self.hand, self.obj, self.cfg,
                                    FrameTrackerConfig.from_dict({**p, "joint_capacity": capacity}), sdf=self.sdf,
                                    initial_pose=camera_to_hand_from_param(p["initial_pose"]),  # same [x y z q] layout
                                    warn=self.errors.warn, info=self.get_logger().info)
        self.tracker.set_hand_base(self.calib.track)  # a moving hand base through /tf (a static one: set_calibration)
        self.mapper = self.hand.joint_state_mapper()
        self.checks = InputChecks(self.tracker, self.mapper, self.errors, self.get_logger(), p)  # issue 28
        # joint states (100 Hz) wait in their DDS reader (no callback each), taken as one batch per run
        self.joint_reader = DeferredReader(self, bus, JointState, graph.JOINT_STATES, depth=JOINT_READER_DEPTH)
        self.last_run = 0.0  # monotonic time of the last run_tracker
        self.refinement = RefinementClient(self, self.tracker, p, self.errors)
        # pose, TF, status, the lab outputs and /diagnostics of each processed frame (tracking_outputs)
        self.outputs = FrameOutputs(self, bus, self.tracker, self.checks, self.refinement, p)
        # every camera_info is a frame to pose: a deep reader queue (small messages), so that a burst
        # (bad messages, a busy executor) does not push frames out before they are taken (issue 28)
        subscribe(self, bus, CameraInfo, graph.CAMERA_TOPICS["color_info"], self.on_camera_info, STATE_QOS)
        # observations: with a frame per camera_info they wait in DDS readers for the next run of the
        # tracker (a callback each cost ~0.3 ms of CPU); without (pose_every_frame false) an
        # observation is what makes a frame, and wakes the tracker
        self.obs_readers = {}
        for kind, msg_type, topic in (("object", ObjectObservation, "object_observation"),
                                      ("fingertips", FingertipObservations, "fingertips")):
            if p["pose_every_frame"]:
                self.obs_readers[kind] = DeferredReader(self, bus, msg_type, graph.TOPICS[topic],
                                                        depth=OBS_READER_DEPTH)
            else:  # a one-argument callback (a lambda with a default would be handed the message info too)
                subscribe(self, bus, msg_type, graph.TOPICS[topic], functools.partial(self.on_observation, kind),
                          STATE_QOS)
        if bus is not None and p["pose_every_frame"]:  # one process: a bus cannot unsubscribe, so read it throughout
            self.obs_readers["hand_alignment"] = DeferredReader(self, bus, TransformStamped,
                                                                graph.TOPICS["hand_alignment"], depth=OBS_READER_DEPTH)
        subscribe(self, bus, PoseStamped, graph.TOPICS["initial_pose"], self.on_initial_pose, OUTPUT_QOS)
        subscribe(self, bus, PoseWithCovarianceStamped, graph.TOPICS["refined_pose"], self.on_refined_pose, OUTPUT_QOS)
        self.create_service(Trigger, graph.SERVICES["reset_tracking"], self.on_reset)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # pairing budgets are wall time (a sim clock stops)
        # the 10 ms timer runs only while a frame, a late observation or a refinement waits (_arm_timer)
        self.timer = self.create_timer(0.01, self.on_timer, clock=steady)
        self.timer.cancel()
        self.create_timer(JOINTS_IDLE, self.on_idle, clock=steady)
        self.create_timer(1.0, self.outputs.publish_diagnostics)
        self.get_logger().info(f"tracking {self.obj.name} (tf via {self.outputs.tf.backend}, "
                               f"calibration {'estimated' if self.cfg.estimate_calibration else 'fixed'})")

    # ------------------------------------------------------------------ inputs
    def on_camera_info(self, msg, info) -> None:
        try:  # validated at the door (issue 28), then the one CameraInfo rule (P, binning, ROI)
            intrinsics = msgs.camera_info_to_intrinsics(msg, self.p["camera_frame"])
        except ValueError as e:
            self.errors.reject(e, "camera_info", "camera_info ignored: ")
            return
        if not self.checks.stamp_ok("camera_info", intrinsics.stamp_ns):
            self.run_tracker()  # the joint states' stamps checked now: a jump both confirm resets at once
            return
        self.tracker.set_camera(intrinsics.K)
        if intrinsics.distorted:
            self.errors.warn("camera_distortion", "camera_info has distortion coefficients but no P: "
                                                  "observations are used as if undistorted")
        # every camera frame gets a pose: the frame is known from its camera_info (small, sent next
        # to each image), whether or not the segmentation keeps up with it
        if self.p["pose_every_frame"]:
            stages = {"sent": info["source_timestamp"], "received": info["received_timestamp"],
                      "callback": time.time_ns()}
            self.tracker.add_frame(msgs.header_stamp_ns(msg), time.monotonic(), stages)
            self.run_tracker(arm=False)
            self._await_frame()  # then the timer, for what still waits
            self._arm_timer()

    def _await_frame(self) -> None:
        """Pose the new frame in this callback (one executor wake, where the timer took three): wait on the joint
        reader for flowing joint states to reach it, then on the observation reader out its pairing_timeout."""
        trk, deadline, retried = self.tracker, time.monotonic() + JOINT_WAIT, False
        while trk.frames:  # each turn waits, runs the tracker once more, or returns
            now, stamp, newest = time.monotonic(), min(trk.frames), trk.joints.latest()
            pair_until = trk.frames[stamp]["t_first"] + trk.cfg.pairing_timeout
            if newest is not None and newest[0] < stamp and now - trk.last_joint_time < JOINTS_IDLE:
                reader, until = self.joint_reader, deadline
            elif now < pair_until and "object" in self.obs_readers:
                reader, until = self.obs_readers["object"], min(pair_until, deadline)
            elif not retried:  # its pairing_timeout passed since the last run
                reader, until, retried = None, now, True
            else:
                return  # it waits for something else (/tf, calibration, joint states that stopped): the timer
            if reader is not None:
                if until <= now:
                    return
                reader.wait(until - now)
            self.run_tracker(arm=False)

    def on_observation(self, kind: str, msg) -> None:
        self.add_observation(kind, msg)
        self.run_tracker()

    def add_observation(self, kind: str, msg) -> None:
        try:
            (validate.check_object_observation if kind == "object" else validate.check_fingertips)(msg)
            validate.check_frame(msg.header.frame_id, self.p["camera_frame"], kind)
            obs = FROM_MSG[kind](msg)
        except (ValueError, TypeError) as e:
            self.errors.reject(e, f"{kind}_observation", f"{kind} observation ignored: ")
            return
        if not self.checks.stamp_ok(kind, msgs.header_stamp_ns(msg)):
            return
        self.tracker.add_observation(msgs.header_stamp_ns(msg), kind, obs, time.monotonic())

    def on_initial_pose(self, msg) -> None:
        try:
            if msg.header.frame_id:
                validate.check_frame(msg.header.frame_id, self.p["camera_frame"], "initial_pose")
            self.tracker.set_initial_pose(msgs.pose_to_matrix(msg))
        except (ValueError, TypeError) as e:
            self.errors.reject(e, "initial_pose", "initial pose ignored: ")

    def on_refined_pose(self, msg) -> None:
        """A refinement result (ours - usually before the service response, same pose and stamp - or a
        user's): re-initialises a tracker that is not TRACKING, at the refined frame's stamp."""
        try:
            validate.check_covariance(msg.pose.covariance, "refined_pose")
            T, cov, stamp = msgs.pose_to_matrix(msg), msgs.covariance_from_msg(msg), msgs.header_stamp_ns(msg)
        except (ValueError, TypeError) as e:
            self.errors.reject(e, "refined_pose", "refined pose ignored: ")
            return
        if self.tracker.reinitialize(T, cov, stamp):
            self.get_logger().info(f"re-initialising from the refinement result on {graph.TOPICS['refined_pose']} "
                                   f"(stamp {stamp})")

    def on_reset(self, request, response):
        self.tracker.reset("reset service")
        response.success, rearmed = True, self.tracker.pending_init is not None
        response.message = "tracker reset" + (" (initial pose re-armed from the parameter)" if rearmed else "")
        return response

    def on_timer(self) -> None:
        if self.tracker.pending or self.p["publish_on_joint_states"]:
            self.run_tracker()
        self.refinement.poll()
        self._arm_timer()

    def on_idle(self) -> None:
        """Without frames the joint states are still taken, checked (bad input is reported) and held."""
        if time.monotonic() - self.last_run >= JOINTS_IDLE:
            self.run_tracker()
        self.refinement.poll()  # issue 26: a failed global request is asked again while no frame comes

    def _arm_timer(self) -> None:
        waiting = self.tracker.pending or self.refinement.future is not None or self.p["publish_on_joint_states"]
        if waiting == self.timer.is_canceled():
            self.timer.reset() if waiting else self.timer.cancel()

    # ------------------------------------------------------------------ processing
    def run_tracker(self, arm: bool = True) -> None:
        """Hand the joint states that arrived since the last run to the tracker as one batch, run it,
        publish what it processed; then arm (or cancel) the 10 ms timer for what still waits."""
        now = self.last_run = time.monotonic()
        batch = [(m, i) for m, i in self.joint_reader.take() if self.checks.joint_ok(m)]  # issue 28: stamps first
        if batch:
            stamps, q = joint_state_arrays([m for m, _ in batch], self.mapper,
                                           lambda text: self.errors.warn("joint_state", text))
            self.tracker.add_joint_states(stamps, q, now)
        for kind, reader in self.obs_readers.items():
            self._take(kind, reader)
        self.tracker.set_calibration(self.calib.static)  # a moving base: the tracker looks /tf up at each stamp
        publish = self.outputs.publish  # pose, TF, status, lab outputs, refinement requests
        for result in self.tracker.process(now):
            publish(result)
        self._follow_inputs_in_use()
        if arm:
            self._arm_timer()

    def _take(self, kind: str, reader) -> None:
        """Every message waiting in ``reader`` as an input of ``kind``."""
        for msg, _info in reader.take():
            self.on_hand_alignment(msg) if kind == "hand_alignment" else self.add_observation(kind, msg)

    def _follow_inputs_in_use(self) -> None:
        """Read /hp_ros/fingertips only while the filter can use them (they observe the camera->hand
        correction, which a moving base does not estimate by default), /hp_ros/hand_alignment only
        while it cannot (a moving base: /tf corrected by the segmentation's hand alignment). The
        segmentation node makes each only while someone subscribes. With a bus (one process) the
        readers stay: a bus cannot unsubscribe."""
        if self.bus is not None or not self.p["pose_every_frame"]:
            return
        for kind, wanted in (("fingertips", self.tracker.uses_fingertips),
                             ("hand_alignment", self.tracker.uses_hand_alignment)):
            reader = self.obs_readers.get(kind)
            if wanted == (reader is not None):
                continue
            if wanted:
                self.obs_readers[kind] = DeferredReader(self, None, OPTIONAL_INPUTS[kind], graph.TOPICS[kind],
                                                        depth=OBS_READER_DEPTH)
            else:
                self._take(kind, self.obs_readers.pop(kind))  # what came is still applied
                reader.close(self)
            self.get_logger().info(f"{'reading' if wanted else 'not reading'} {graph.TOPICS[kind]}")

    def on_hand_alignment(self, msg) -> None:
        try:
            T, parent, child, stamp = msgs.transform_stamped_to_matrix(msg)
            validate.check_frame(parent, self.p["camera_frame"], "hand_alignment")
            validate.check_frame(child, self.p["hand_base_frame"], "hand_alignment child")
        except (ValueError, TypeError) as e:
            self.errors.reject(e, "hand_alignment", "hand alignment ignored: ")
            return
        if self.checks.stamp_ok("hand_alignment", stamp):
            self.tracker.add_hand_alignment(stamp, T)


def main(args=None):
    return run_node(TrackingNode, "tracking_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
