"""The tracking node's client of /hp_ros/refine_pose: ask when the track is LOST, give up after
``refinement_timeout``, hand a good answer (mask IoU >= ``min_refinement_iou``) to the tracker."""
from __future__ import annotations

import time

from geometry_msgs.msg import PoseStamped
from hp_ros_msgs.srv import RefinePose

from hp_ros import graph
from hp_ros.io import msgs


class RefinementClient:
    """At most one refine_pose request in flight; :meth:`poll` (from a timer) takes its answer."""

    def __init__(self, node, tracker, params: dict, errors):
        self.node, self.tracker, self.p, self.errors = node, tracker, params, errors
        self.client = node.create_client(RefinePose, graph.SERVICES["refine_pose"])
        self.future = None
        self.started = 0.0
        self.requests = 0

    def request(self, stamp: int) -> None:
        """Ask for a refinement of the frame at ``stamp`` (unless disabled, busy or unavailable)."""
        if not self.p["request_refinement"] or self.future is not None or not self.client.service_is_ready():
            return
        req = RefinePose.Request()
        req.stamp = msgs.ns_to_stamp(stamp, type(req.stamp))
        req.use_initial_pose = True
        T0 = self.tracker.refinement_start_pose(stamp)
        req.initial_pose = msgs.make_pose_stamped(T0, stamp, self.p["camera_frame"], PoseStamped)
        self.future = self.client.call_async(req)
        self.started = time.monotonic()
        self.requests += 1

    def poll(self) -> None:
        """Give up on a request that takes too long; take a finished one's answer."""
        if self.future is None:
            return
        if not self.future.done():
            if time.monotonic() - self.started > self.p["refinement_timeout"]:
                self.future.cancel()
                self.future = None
                self.errors.warn("refine_timeout", f"refine_pose gave no answer within "
                                                   f"{self.p['refinement_timeout']} s: asking again")
            return
        fut, self.future = self.future, None
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
                                       msgs.header_stamp_ns(res.pose), only_if_lost=True):
            # at the refined frame's stamp: the tracker re-predicts from there with the joint states
            # since (the object moved while the refinement ran)
            self.node.get_logger().info(f"re-initialising from the refinement result (mask IoU {res.mask_iou:.2f})")
