"""The tracking node's outputs: per processed frame the pose, TF, /hp_ros/tracking_status and the
lab outputs (:class:`~hp_ros.nodes.lab_outputs.LabOutputs`), the refinement requests the frame's
state calls for, and once a second /diagnostics.

:meth:`FrameOutputs.publish` takes one :class:`~hp_ros.core.ekf.FrameResult`: it keeps the seed and
first-frame bookkeeping of :class:`~hp_ros.nodes.tracking_inputs.InputChecks` (issue 28), asks the
refinement on a cold start (issue 26) and when LOST, publishes the pose and TF (not while LOST
unless ``publish_when_lost``) and the status, and records the frame's stage times.
"""
from __future__ import annotations

import collections
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from hp_ros_msgs.msg import TrackingStatus

from hp_ros import graph
from hp_ros.core.ekf import TrackState
from hp_ros.io import msgs
from hp_ros.nodes.diag_checks import FrequencyCheck, TimestampCheck
from hp_ros.nodes.diagnostics import diagnostic_status, diagnostics_message, stage_medians_ms
from hp_ros.nodes.lab_outputs import LabOutputs
from hp_ros.nodes.local_bus import publisher
from hp_ros.nodes.qos import OUTPUT_QOS
from hp_ros.nodes.tf_out import TfPublisher

__all__ = ["FrameOutputs", "TRACKER_STAGES"]

# stages of a frame in this node (wall-clock): camera_info delivery, executor queue, waiting for
# the frame's observations and joint states (at most pairing_timeout), filter + publishing
TRACKER_STAGES = (("transport", "sent", "received"), ("executor", "received", "callback"),
                  ("wait_observations", "callback", "start"), ("filter_publish", "start", "published"))


class FrameOutputs:
    """The publishers of the tracking ``node`` (``bus``: its LocalBus or None) and what a frame's
    result leaves behind: ``last_status``, ``stage_times``, the pose-rate and frame-stamp checks."""

    def __init__(self, node, bus, tracker, checks, refinement, p: dict):
        self.node, self.tracker, self.checks, self.refinement, self.p = node, tracker, checks, refinement, p
        self.stage_times = collections.deque(maxlen=300)  # per-frame wall-clock ns stamps, see TrackingNode.on_camera_info
        self.last_status = None
        self.pose_pub = publisher(node, bus, PoseWithCovarianceStamped, graph.TOPICS["object_pose"], OUTPUT_QOS)
        self.status_pub = publisher(node, bus, TrackingStatus, graph.TOPICS["tracking_status"], OUTPUT_QOS)
        self.diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self.tf = TfPublisher(node)
        self.lab = LabOutputs(node, node.hand, node.obj, node.sdf, p)  # detections, contacts, markers (issue 24)
        self.rate_check, self.stamp_check = FrequencyCheck(p["expected_rate"]), TimestampCheck(*p["frame_delay_limits"])

    def publish(self, r) -> None:
        """One frame's :class:`FrameResult`: pose and TF (not while LOST unless publish_when_lost), status."""
        checks = self.checks
        if r.T_cam_obj is not None and r.state == TrackState.TRACKING:  # issue 28: seed and first frame
            checks.last_T, checks.jump_seed = r.T_cam_obj, None
            checks.first_stamp = r.stamp if checks.first_stamp is None else checks.first_stamp
        if r.state == TrackState.INITIALIZING and self.tracker.pending_init is None:  # issue 26: cold start
            self.refinement.request(r.stamp, seed=checks.jump_seed, global_estimate=checks.jump_seed is None)
        posed = r.T_cam_obj is not None and (r.state != TrackState.LOST or self.p["publish_when_lost"])
        if posed:
            cam = self.p["camera_frame"]
            self.pose_pub.publish(msgs.make_pose_with_covariance_stamped(r.T_cam_obj, r.covariance, r.stamp, cam,
                                                                         PoseWithCovarianceStamped))
            if self.tf.wanted():
                self.tf.send(msgs.make_transform_stamped(r.T_cam_obj, r.stamp, cam, self.p["object_frame"],
                                                         TransformStamped))
        self.lab.publish(r, posed, self.tracker.K)  # only what is subscribed (issue 24)
        st = TrackingStatus()
        st.header = msgs.make_header(type(st.header), r.stamp, self.p["camera_frame"])
        st.state, st.state_name = r.state, TrackState.NAMES[r.state]
        st.nis, st.nis_gate, st.covariance_trace = r.nis, r.nis_gate, r.covariance_trace
        st.rejected_updates, st.contact_count = r.rejections, r.contact_count
        st.latency_ms = (self.node.get_clock().now().nanoseconds - r.stamp) * 1e-6
        if posed:
            self.rate_check.tick()
            self.stamp_check.tick(st.latency_ms * 1e-3)
        st.predicted, st.message = bool(r.predicted), r.message
        self.status_pub.publish(st)
        self.last_status = st
        if r.stages is not None:
            r.stages["published"] = time.time_ns()
            self.stage_times.append(r.stages)
        if r.state == TrackState.LOST:
            self.refinement.request(r.stamp)

    def publish_diagnostics(self) -> None:
        st = self.last_status
        if st is None or st.state == TrackState.INITIALIZING:
            level, message = DiagnosticStatus.WARN, "initialising"
        elif st.state == TrackState.LOST:
            level, message = DiagnosticStatus.ERROR, f"lost: {st.message}"
        else:
            level, message = DiagnosticStatus.OK, "tracking"
        vals = {**self.tracker.counts, "refine_requests": self.refinement.requests}
        vals.update(stage_medians_ms(list(self.stage_times), TRACKER_STAGES))
        vals.update(self.node.problem_values())
        vals["stamp_resets"] = self.checks.stamps.resets
        corr = self.tracker.hand_correction
        if corr is not None:  # /tf corrected by the hand alignment (moving base): its size, hand frame
            vals.update(hand_correction_mm=round(1e3 * float(np.linalg.norm(corr[1][:3])), 2),
                        hand_correction_deg=round(float(np.degrees(np.linalg.norm(corr[1][3:]))), 2))
        if st is not None:
            vals.update(nis=st.nis, covariance_trace=st.covariance_trace, contacts=st.contact_count,
                        latency_ms=round(st.latency_ms, 2))
        arr = diagnostics_message(self.node, "tracking_node: tracking", level, message, vals,
                                  hardware_id=self.p["object_frame"])
        for task, check in (("pose rate", self.rate_check), ("frame stamps", self.stamp_check)):
            arr.status.append(diagnostic_status(f"tracking_node: {task}", *check.status(), self.p["object_frame"]))
        self.diag_pub.publish(arr)
