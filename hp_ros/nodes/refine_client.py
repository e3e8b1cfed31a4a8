"""The tracking node's client of /hp_ros/refine_pose: ask when the track is LOST (from the tracker's
re-centred estimate) and while it has no pose at all (INITIALIZING without an initial pose: the
refinement node then makes a global estimate from the frame, :mod:`hp_ros.core.global_pose`), give
up after ``refinement_timeout``, hand a good answer (mask IoU >= ``min_refinement_iou``) to the
tracker, which re-initialises at the answer's frame and re-predicts through the joint states since. After a
failed or refused answer the next request is a global estimate."""
from __future__ import annotations

import time

from geometry_msgs.msg import PoseStamped
from hp_ros_msgs.srv import RefinePose

from hp_ros import graph
from hp_ros.core.ekf.track_policy import TrackState
from hp_ros.io import msgs


class RefinementClient:
    """At most one refine_pose request in flight; :meth:`poll` (from a timer) takes its answer."""

    def __init__(self, node, tracker, params: dict, errors):
        self.node, self.tracker, self.p, self.errors = node, tracker, params, errors
        self.client = node.create_client(RefinePose, graph.SERVICES["refine_pose"])
        self.future = None
        self.started = 0.0
        self.requests = 0
        self.global_pending = False  # a global request failed: asked again by poll (the world may be still)
        self.last_failed = False     # the last answer was a failure or refused
        self.retry_at = 0.0

    def request(self, stamp: int, seed=None, global_estimate: bool = False) -> None:
        """Ask for a refinement of the frame at ``stamp`` (unless disabled, busy or unavailable),
        starting from ``seed`` ``(4, 4)`` when given (after a time jump: the last estimate), from
        no pose with ``global_estimate`` (the node finds one), else from the tracker's."""
        if not self.p["request_refinement"] or self.future is not None or not self.client.service_is_ready():
            return
        # a LOST track whose last answer was refused asks for a global estimate (its estimate may be
        # beyond the refinement's reach)
        global_estimate = global_estimate or (self.last_failed and seed is None)
        req = RefinePose.Request()
        # a global estimate is of the newest buffered frame (stamp 0): the answer carries its stamp
        req.stamp = msgs.ns_to_stamp(0 if global_estimate else stamp, type(req.stamp))
        self.global_pending = global_estimate
        req.use_initial_pose = not global_estimate
        if not global_estimate:
            T0 = self.tracker.refinement_start_pose(stamp) if seed is None else seed
            req.initial_pose = msgs.make_pose_stamped(T0, stamp, self.p["camera_frame"], PoseStamped)
        self.future = self.client.call_async(req)
        self.started = time.monotonic()
        self.requests += 1

    def poll(self) -> None:
        """Give up on a request that takes too long; take a finished one's answer; ask again for a
        global estimate that failed (half a second later) while the track has no pose."""
        if self.future is None:
            if self.global_pending and time.monotonic() >= self.retry_at \
                    and self.tracker.state != TrackState.TRACKING and self.tracker.pending_init is None:
                self.request(0, global_estimate=True)
            return
        if not self.future.done():
            if time.monotonic() - self.started > self.p["refinement_timeout"]:
                self.future.cancel()
                self.future = None
                self.errors.warn("refine_timeout", f"refine_pose gave no answer within "
                                                   f"{self.p['refinement_timeout']} s: asking again")
            return
        fut, self.future = self.future, None
        self.retry_at = time.monotonic() + 0.5
        self.last_failed = True
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
        elif self.tracker.reinitialize(msgs.pose_to_matrix(res.pose), msgs.covariance_from_msg(res.pose),
                                       msgs.header_stamp_ns(res.pose)):
            # at the refined frame's stamp: the tracker re-predicts from there with the joint states
            # since (the object moved while the refinement ran)
            self.node.get_logger().info(f"re-initialising from the refinement result (mask IoU {res.mask_iou:.2f})")
        if res is not None and res.success and res.mask_iou >= self.p["min_refinement_iou"]:
            self.global_pending = self.last_failed = False
